package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BenchmarkCache compares, side by side in one run, three ways of getting
// the same image into a daemon that lacks it (each op removes it first,
// untimed): ghcr-pull with a warm cache-path (the relay serving the layout),
// `docker load` of a `docker save` tar of the image (what the docker-cache
// actions do after restoring), and `docker pull` from the registry. The
// three alternate within each iteration, so a load spike on the shared
// machine hits them alike. Reported per op: each way's milliseconds, the
// warm run's upstream blob GETs (goal 0) and manifest requests, and the
// load average at the start and end. What actions/cache would save and
// restore for the cache and for the tar is measured beside them: the
// sizes of the layout and of the tar, and of each as a zstd tar (what
// actions/cache uploads and downloads), and the time to extract each such
// archive (restore-layout, restore-tar; the download itself is not
// modelled). With GHCR_PULL_BENCH_BEFORE naming an earlier build,
// "cache-before" runs it on the same warm layout as a fourth
// way (its upstream requests are not counted).
//
// It runs for two images (cacheBenchImages: random layers, and layers of
// many compressible files) over two networks between the runner and the
// registry (cacheBenchLinks): loopback, where the download the cache saves costs
// nothing and the ways compare by their local work, and a modelled
// wide-area link (wanLink) with a 10 ms round trip and 1 Gbit/s.
//
//	go test ./internal/e2e -run '^$' -bench Cache -benchtime 5x
func BenchmarkCache(b *testing.B) {
	e := Start(b)
	if _, err := exec.LookPath("docker"); err != nil {
		skipOrFatal(b, "docker CLI not installed: %v", err)
	}
	for _, img := range cacheBenchImages {
		repo := "bench/cached-" + img.name
		ref, err := name.ParseReference(e.Host + "/" + repo + ":1")
		if err != nil {
			b.Fatal(err)
		}
		e.pushImageAs(b, ref, img.make(b))
		e.Front.AddUser("bencher", "bench-token", false, repo)
		for _, link := range cacheBenchLinks {
			b.Run(img.name+"/"+link.name, func(b *testing.B) {
				registry := e.Host
				if link.rtt > 0 {
					l, err := net.Listen("tcp", "127.0.0.1:0")
					if err != nil {
						b.Fatal(err)
					}
					defer l.Close()
					go proxy(l, e.Host, newWANLink(link.rtt, link.bytesPerSec))
					registry = l.Addr().String()
				}
				benchCache(b, e, registry, repo)
			})
		}
	}
}

// cacheBenchImages are BenchmarkCache's images, 4 layers of about 32 MiB
// each: random (one file of random bytes per layer: incompressible, the
// daemon's work is decompression) and files (2,048 files per layer, 4-28
// KiB each, compressing about 2.7 to 1 with gzip, as image layers of
// binaries and text do: the daemon's work is also unpacking many files,
// and a `docker save` tar, whose layers are uncompressed, is bigger than
// the layout).
var cacheBenchImages = []struct {
	name string
	make func(b *testing.B) v1.Image
}{
	{"random", func(b *testing.B) v1.Image {
		img, err := random.Image(32<<20, 4)
		if err != nil {
			b.Fatal(err)
		}
		return img
	}},
	{"files", func(b *testing.B) v1.Image {
		var layers []v1.Layer
		for i := range 4 {
			layers = append(layers, filesLayer(b, int64(i), 2048))
		}
		img, err := mutate.AppendLayers(empty.Image, layers...)
		if err != nil {
			b.Fatal(err)
		}
		return withPlatform(b, img)
	}},
}

// filesLayer is a layer of n files of 4-28 KiB under 64 directories, made
// from seed: each KiB of a file is random bytes one time in four and words
// of a small vocabulary otherwise.
func filesLayer(b *testing.B, seed int64, n int) v1.Layer {
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	words := make([]string, 256)
	for i := range words {
		w := make([]byte, 3+rng.IntN(8))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(w)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	chunk := make([]byte, 1024)
	for f := range n {
		var body bytes.Buffer
		for k := range 4 + rng.IntN(25) {
			if k%4 == 0 {
				for i := range chunk {
					chunk[i] = byte(rng.Uint32())
				}
				body.Write(chunk)
				continue
			}
			start := body.Len()
			for body.Len()-start < len(chunk) {
				body.WriteString(words[rng.IntN(len(words))])
				body.WriteByte(' ')
			}
			body.Truncate(start + len(chunk))
		}
		hdr := &tar.Header{Name: fmt.Sprintf("opt/bench%d/d%02d/f%04d", seed, f%64, f), Mode: 0o644, Size: int64(body.Len()), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(body.Bytes()); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// cacheBenchLinks are BenchmarkCache's networks between the runner and
// the registry.
var cacheBenchLinks = []benchLink{{name: "loopback"}, {name: "rtt=10ms,1Gbit/s", rtt: 10 * time.Millisecond, bytesPerSec: 125e6}}

// benchCache is BenchmarkCache's ways with the registry at registry
// (host:port, plain HTTP on loopback).
func benchCache(b *testing.B, e *Env, registry, repo string) {
	ref := registry + "/" + repo + ":1"
	ws := b.TempDir()
	dockerConfig := b.TempDir()
	login := exec.Command("docker", "--config", dockerConfig, "login", "-u", "bencher", "--password-stdin", registry)
	login.Stdin = strings.NewReader("bench-token")
	if out, err := login.CombinedOutput(); err != nil {
		b.Fatalf("docker login: %v\n%s", err, out)
	}
	defer os.RemoveAll(filepath.Join(dockerConfig, "config.json"))
	docker := func(args ...string) {
		if out, err := exec.Command("docker", append([]string{"--config", dockerConfig}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("docker %v: %v\n%s", args, err, out)
		}
	}
	cachedWith := func(e *Env) func() {
		return func() {
			res := e.RunAction(b, map[string]string{"image": ref, "username": "bencher", "password": "bench-token", "cache-path": "cache", "summary": "false"}, "GITHUB_WORKSPACE="+ws)
			if res.ExitCode != 0 {
				b.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
			}
		}
	}
	cached := cachedWith(e)
	// Warm the cache and make the tar, untimed.
	e.RemoveLocalImage(b, ref)
	cached()
	archive := filepath.Join(b.TempDir(), "image.tar")
	docker("save", "-o", archive, ref)

	// What actions/cache would save of each, untimed: a zstd tar as it
	// writes one (tar --use-compress-program zstdmt); restoring it is
	// timed below (restore-layout, restore-tar).
	saved := b.TempDir()
	layoutArchive, tarArchive := filepath.Join(saved, "layout.tzst"), filepath.Join(saved, "tar.tzst")
	zstdTar := func(args ...string) {
		if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
			b.Fatalf("tar %v: %v\n%s", args, err, out)
		}
	}
	zstdTar("--use-compress-program", "zstd -T0 --long=30", "-cf", layoutArchive, "-C", ws, "cache")
	zstdTar("--use-compress-program", "zstd -T0 --long=30", "-cf", tarArchive, "-C", filepath.Dir(archive), filepath.Base(archive))
	restore := func(archive string) func() {
		return func() {
			dir, err := os.MkdirTemp(saved, "restore-")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(dir)
			zstdTar("--use-compress-program", "zstd -d --long=30", "-xf", archive, "-C", dir)
		}
	}

	ways := []struct {
		name string
		op   func()
	}{
		{"cache", cached},
		{"load", func() { docker("load", "-q", "-i", archive) }},
		{"pull", func() { docker("pull", "-q", ref) }},
		{"restore-layout", restore(layoutArchive)},
		{"restore-tar", restore(tarArchive)},
	}
	if before := e.previousBuild(); before != nil {
		ways = append(ways, struct {
			name string
			op   func()
		}{"cache-before", cachedWith(before)})
	}
	took := make([]time.Duration, len(ways))
	blobGets, manifestReqs := 0, 0
	b.Logf("load average at start: %s", loadAverage())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range ways {
			w := ways[(i+k)%len(ways)]
			b.StopTimer()
			e.RemoveLocalImage(b, ref)
			e.Front.ResetLog()
			b.StartTimer()
			start := time.Now()
			w.op()
			took[(i+k)%len(ways)] += time.Since(start)
			b.StopTimer()
			if w.name == "cache" {
				blobs, manifests := upstreamGets(e, repo)
				for _, n := range blobs {
					blobGets += n
				}
				manifestReqs += len(manifests)
			}
		}
	}
	for k, w := range ways {
		b.ReportMetric(float64(took[k].Milliseconds())/float64(b.N), w.name+"-ms/op")
	}
	b.ReportMetric(float64(blobGets)/float64(b.N), "warm-upstream-blob-GETs/op")
	b.ReportMetric(float64(manifestReqs)/float64(b.N), "warm-upstream-manifest-requests/op")
	// What actions/cache saves and restores for each: the layout (compressed
	// blobs) and the docker save tar (uncompressed layers).
	b.ReportMetric(float64(dirSize(b, filepath.Join(ws, "cache")))/1e6, "layout-MB")
	b.ReportMetric(float64(fileSize(b, archive))/1e6, "save-tar-MB")
	b.ReportMetric(float64(fileSize(b, layoutArchive))/1e6, "layout-tzst-MB")
	b.ReportMetric(float64(fileSize(b, tarArchive))/1e6, "save-tar-tzst-MB")
	b.Logf("load average at end: %s", loadAverage())
	e.RemoveLocalImage(b, ref)
}

// dirSize is the bytes of the regular files under dir.
func dirSize(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func fileSize(b *testing.B, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
