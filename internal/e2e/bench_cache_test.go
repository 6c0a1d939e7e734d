package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkCache compares, side by side in one run, three ways of getting
// the same image into a daemon that lacks it (each op removes it first,
// untimed): ghcr-pull with a warm cache-path (the relay serving the layout),
// `docker load` of a `docker save` tar of the image (what the docker-cache
// actions do after restoring), and `docker pull` from the registry. The
// three alternate within each iteration, so a load spike on the shared
// machine hits them alike. Reported per op: each way's milliseconds, the
// warm run's upstream blob GETs (goal 0) and manifest requests, and the
// load average at the start and end. With GHCR_PULL_BENCH_BEFORE naming an
// earlier build, "cache-before" runs it on the same warm layout as a fourth
// way (its upstream requests are not counted).
//
// It runs over two networks between the runner and the registry
// (cacheBenchLinks): loopback, where the download the cache saves costs
// nothing and the ways compare by their local work, and a modelled
// wide-area link (wanLink) with a 10 ms round trip and 1 Gbit/s.
//
//	go test ./internal/e2e -run '^$' -bench Cache -benchtime 5x
func BenchmarkCache(b *testing.B) {
	e := Start(b)
	if _, err := exec.LookPath("docker"); err != nil {
		skipOrFatal(b, "docker CLI not installed: %v", err)
	}
	const size, layers = 32 << 20, 4
	e.pushImage(b, "bench/cached", "1", size, layers)
	e.Front.AddUser("bencher", "bench-token", false, "bench/cached")
	for _, link := range cacheBenchLinks {
		b.Run(link.name, func(b *testing.B) {
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
			benchCache(b, e, registry)
		})
	}
}

// cacheBenchLinks are BenchmarkCache's networks between the runner and
// the registry.
var cacheBenchLinks = []benchLink{{name: "loopback"}, {name: "rtt=10ms,1Gbit/s", rtt: 10 * time.Millisecond, bytesPerSec: 125e6}}

// benchCache is BenchmarkCache's ways with the registry at registry
// (host:port, plain HTTP on loopback).
func benchCache(b *testing.B, e *Env, registry string) {
	ref := registry + "/bench/cached:1"
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

	ways := []struct {
		name string
		op   func()
	}{
		{"cache", cached},
		{"load", func() { docker("load", "-q", "-i", archive) }},
		{"pull", func() { docker("pull", "-q", ref) }},
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
				blobs, manifests := upstreamGets(e, "bench/cached")
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
	b.Logf("load average at end: %s", loadAverage())
	e.RemoveLocalImage(b, ref)
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
