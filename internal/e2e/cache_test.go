package e2e

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/moby/client"

	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/registrytest"
)

// echoWithLayer is busyboxEcho(word) with a random layer of its own on
// top: two tags of it share the busybox layer and differ in the other.
func echoWithLayer(t *testing.T, word string) v1.Image {
	t.Helper()
	l, err := random.Layer(256<<10, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(busyboxEcho(t, word), l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// upstreamGets counts the registry front's GETs of repo's blobs by digest,
// and lists its manifest requests, since the last ResetLog.
func upstreamGets(e *Env, repo string) (blobs map[string]int, manifests []string) {
	blobs = map[string]int{}
	for _, q := range e.Front.Requests() {
		switch {
		case q.Method == "GET" && strings.Contains(q.Path, "/"+repo+"/blobs/"):
			blobs[q.Path[strings.LastIndex(q.Path, "/")+1:]]++
		case strings.Contains(q.Path, "/"+repo+"/manifests/"):
			manifests = append(manifests, q.Method+" "+q.Path[strings.LastIndex(q.Path, "/")+1:])
		}
	}
	return blobs, manifests
}

// TestCache is cache-path into the runner's daemon through the binary, as
// a job with actions/cache would run it: a cold run fills the layout, a
// warm one (a fresh daemon, the layout restored) asks the registry for
// nothing but the probe's manifest requests, a moved tag fetches only its
// new blobs, a damaged blob is fetched again and never served. After each
// run the daemon holds the image under the user's tag and runs it, the
// layout reads back with go-containerregistry naming the image, and
// nothing is left: no loopback name, no partial file, no password.
func TestCache(t *testing.T) {
	e := Start(t)
	if _, err := exec.LookPath("docker"); err != nil {
		skipOrFatal(t, "the docker CLI is not installed: %v", err)
	}
	const repo = "cache/app"
	e.Front.AddUser("cacher", canary, false, repo)
	ref, err := name.ParseReference(e.Host + "/" + repo + ":1")
	if err != nil {
		t.Fatal(err)
	}
	ws := t.TempDir()
	store := filepath.Join(ws, ".cache", "ghcr-pull")

	// run is one job: a fresh daemon (the image removed), the layout as
	// restored, then the step.
	run := func(t *testing.T, img v1.Image, word string) (blobs map[string]int, manifests []string) {
		t.Helper()
		e.RemoveLocalImage(t, ref.String())
		e.Front.ResetLog()
		res := e.RunAction(t, map[string]string{"image": ref.String(), "username": "cacher", "password": canary,
			"cache-path": ".cache/ghcr-pull", "retries": "0"}, "GITHUB_WORKSPACE="+ws)
		assertNoSecretLeak(t, res, canary)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, res.Stderr)
		}
		blobs, manifests = upstreamGets(e, repo)
		d, _ := img.Digest()
		rs := results(t, res)
		if len(rs) != 1 || rs[0]["host"] != "local" || rs[0]["digest"] != d.String() {
			t.Errorf("results %v, want local at %s", rs, d)
		}
		wantLine(t, res.Stdout, "cache-path: ")
		checkDaemonImage(t, e, ref.String(), img, word)
		checkCacheLayout(t, store, ref.String(), img)
		return blobs, manifests
	}

	word1 := "cached-" + randomHex(4)
	img1 := echoWithLayer(t, word1)
	e.pushImageAs(t, ref, img1)
	m1, _ := img1.Manifest()

	t.Run("cold: every blob fetched once, the layout filled", func(t *testing.T) {
		blobs, _ := run(t, img1, word1)
		for _, d := range append([]v1.Descriptor{m1.Config}, m1.Layers...) {
			if blobs[d.Digest.String()] != 1 {
				t.Errorf("blob %s fetched %d times, want once (all: %v)", d.Digest, blobs[d.Digest.String()], blobs)
			}
		}
	})
	if t.Failed() {
		return
	}

	t.Run("warm: zero upstream blob requests", func(t *testing.T) {
		blobs, manifests := run(t, img1, word1)
		if len(blobs) != 0 {
			t.Errorf("a warm run fetched blobs upstream: %v", blobs)
		}
		for _, m := range manifests {
			// The probe asks for the tag; the relay would ask for the
			// digest, and must not.
			if strings.Contains(m, "sha256:") {
				t.Errorf("a warm run asked the registry for a manifest by digest: %v", manifests)
			}
		}
		t.Logf("the warm run's upstream requests: manifests %v, no blobs", manifests)
	})

	word2 := "moved-" + randomHex(4)
	img2, err := mutate.AppendLayers(busyboxEcho(t, word2), mustLayer(t, img1, 1))
	if err != nil {
		t.Fatal(err)
	}
	// The tag moves to an image that shares the random layer of img1 and
	// has a new busybox layer (the word is in the config only, so the
	// busybox layer is shared too): only the new config is new.
	img2 = withNewLayer(t, img2)
	e.pushImageAs(t, ref, img2)
	m2, _ := img2.Manifest()

	t.Run("a moved tag with a warm cache: new blobs fetched, old ones reused", func(t *testing.T) {
		blobs, _ := run(t, img2, word2)
		old := map[string]bool{}
		for _, l := range m1.Layers {
			old[l.Digest.String()] = true
		}
		for _, d := range append([]v1.Descriptor{m2.Config}, m2.Layers...) {
			want := 1
			if old[d.Digest.String()] {
				want = 0
			}
			if blobs[d.Digest.String()] != want {
				t.Errorf("blob %s fetched %d times, want %d (all: %v)", d.Digest, blobs[d.Digest.String()], want, blobs)
			}
		}
		// Pruned: img1's config is gone (checkCacheLayout: nothing but
		// img2's blobs is left).
		if _, err := os.Stat(filepath.Join(store, "blobs", "sha256", m1.Config.Digest.Hex)); err == nil {
			t.Errorf("the layout kept %s, which the run did not use", m1.Config.Digest)
		}
	})

	t.Run("a damaged blob in the cache: fetched again, never served", func(t *testing.T) {
		p := filepath.Join(store, "blobs", "sha256", m2.Layers[0].Digest.Hex)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x01
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		blobs, _ := run(t, img2, word2)
		if len(blobs) != 1 || blobs[m2.Layers[0].Digest.String()] != 1 {
			t.Errorf("upstream blob GETs %v, want the damaged layer %s once", blobs, m2.Layers[0].Digest)
		}
	})
}

func mustLayer(t *testing.T, img v1.Image, i int) v1.Layer {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return ls[i]
}

// withNewLayer adds a random layer on top of img.
func withNewLayer(t *testing.T, img v1.Image) v1.Image {
	t.Helper()
	l, err := random.Layer(128<<10, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	out, err := mutate.AppendLayers(img, l)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkDaemonImage: the runner's daemon holds img under ref (the user's
// tag) and runs it, and no loopback (127.0.0.1:<port>/...) name is left.
func checkDaemonImage(t *testing.T, e *Env, ref string, img v1.Image, word string) {
	t.Helper()
	r, _ := name.ParseReference(ref)
	repo := r.Context().RepositoryStr()
	cfg, _ := img.ConfigName()
	got, err := e.Docker.ImageInspect(context.Background(), ref)
	if err != nil || got.ID != cfg.String() {
		t.Fatalf("the daemon's %s: %v, ID %s, want %s", ref, err, got.ID, cfg)
	}
	out, err := exec.Command("docker", "run", "--rm", ref).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != word {
		t.Errorf("docker run %s: %v, printed %q, want %q", ref, err, out, word)
	}
	list, err := e.Docker.ImageList(context.Background(), client.ImageListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range list.Items {
		for _, n := range append(im.RepoTags, im.RepoDigests...) {
			// The machine's daemon is shared: only names of ref's
			// repository are ours.
			ours := strings.Contains(n, "/"+repo+"@") || strings.Contains(n, "/"+repo+":")
			if ours && !strings.HasPrefix(n, r.Context().RegistryStr()+"/") {
				t.Errorf("a loopback name is left in the daemon: %s", n)
			}
		}
	}
}

// checkCacheLayout reads the layout back with go-containerregistry:
// index.json names ref at img's digest, every blob of img is intact,
// nothing else is in blobs/, and the password is in no file.
func checkCacheLayout(t *testing.T, store, ref string, img v1.Image) {
	t.Helper()
	d, _ := img.Digest()
	want := map[string]bool{d.Hex: true}
	for _, b := range registrytest.CheckLayout(t, store, ref, d) {
		want[b.Digest.Hex] = true
	}
	files, _ := os.ReadDir(filepath.Join(store, "blobs", "sha256"))
	for _, f := range files {
		if !want[f.Name()] {
			t.Errorf("the layout holds %s, which is not the image's", f.Name())
		}
	}
	_ = filepath.Walk(store, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(canary)) {
				t.Errorf("the password is in %s", p)
			}
		}
		return nil
	})
}

// TestCacheActionImage runs the built action image as the runner runs a
// container action: on a job network of its own (not the host's), with
// the daemon's socket mounted. Its 127.0.0.1 is not the daemon's, so the
// daemon reaches the relay through the forwarder the action starts from
// its own image on the host's network. Two runs: the image lands in the
// daemon under the user's tag and runs, the warm run fetches no blob
// upstream, and no forwarder container is left.
func TestCacheActionImage(t *testing.T) {
	e := Start(t)
	if _, err := exec.LookPath("docker"); err != nil {
		skipOrFatal(t, "the docker CLI is not installed: %v", err)
	}
	e.BuildActionImage(t, e.ActionContext(t), actionImageTag, false)
	ctx := context.Background()

	// The job network, and the registry on its gateway: the test's
	// registry listens on the host's 127.0.0.1, which the job network
	// cannot reach, so a proxy on the gateway stands in for the
	// registry's public address.
	netName := "ghcr-pull-job-" + randomHex(4)
	created, err := e.Docker.NetworkCreate(ctx, netName, client.NetworkCreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.Docker.NetworkRemove(context.Background(), created.ID, client.NetworkRemoveOptions{}) })
	in, err := e.Docker.NetworkInspect(ctx, created.ID, client.NetworkInspectOptions{})
	if err != nil || len(in.Network.IPAM.Config) == 0 {
		t.Fatalf("inspecting %s: %v", netName, err)
	}
	gw := in.Network.IPAM.Config[0].Gateway
	registry := proxyTo(t, net.JoinHostPort(gw.String(), "0"), e.Host)

	const repo = "cache/ctr"
	e.Front.AddUser("cacher", canary, false, repo)
	ref, err := name.ParseReference(registry + "/" + repo + ":1")
	if err != nil {
		t.Fatal(err)
	}
	word := "contained-" + randomHex(4)
	img := echoWithLayer(t, word)
	pushed, _ := name.ParseReference(e.Host + "/" + repo + ":1")
	e.pushImageAs(t, pushed, img)
	t.Cleanup(func() { e.RemoveLocalImage(t, ref.String()) })
	ws := t.TempDir()

	for _, run := range []string{"cold", "warm"} {
		t.Run(run, func(t *testing.T) {
			e.RemoveLocalImage(t, ref.String())
			e.Front.ResetLog()
			res := e.RunActionImageOn(t, actionImageTag, map[string]string{"image": ref.String(), "username": "cacher", "password": canary,
				"cache-path": ".cache/ghcr-pull", "insecure-registry": registry, "retries": "0"}, netName, ws)
			assertNoSecretLeak(t, res, canary)
			if res.ExitCode != 0 {
				t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, res.Stderr)
			}
			checkDaemonImage(t, e, ref.String(), img, word)
			checkCacheLayout(t, filepath.Join(ws, ".cache", "ghcr-pull"), ref.String(), img)
			blobs, manifests := upstreamGets(e, repo)
			if run == "warm" && len(blobs) != 0 {
				t.Errorf("the warm run fetched blobs upstream: %v", blobs)
			}
			t.Logf("%s run: %s, upstream blob GETs %v, manifests %v", run, res.Wall, blobs, manifests)
			list, err := e.Docker.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", docker.ForwarderLabel)})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) != 0 {
				t.Errorf("forwarder containers left: %v", list.Items)
			}
		})
	}
}

// proxyTo listens on addr and carries each connection to target, until
// the test ends; it returns the address it listens on.
func proxyTo(t *testing.T, addr, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go proxy(l, target, nil)
	return l.Addr().String()
}

// TestCacheRelay is cache-path with ssh-transfer: relay (issue 26, step 3):
// a host with no route to the registry pulls through the runner's cache.
// The warm run (the host's image removed, the layout restored) fetches no
// blob upstream; the host runs the image, the layout names it, and the host
// is left clean.
func TestCacheRelay(t *testing.T) {
	e := Start(t)
	const repo = "acme/cache-relay"
	e.Front.AddUser("deployer", canary, false, repo)
	gw := StartRemoteHost(t, "cgw", HostSpec{Kind: NoRuntime})
	r := relayRun{e: e, regAddr: gw.ExposeOnHost(t, e.Host)}
	a := StartRemoteHost(t, "ca", HostSpec{Net: Isolated})
	img, _ := relayImage(t, 256<<10)
	r.push(t, repo, "1", img)
	ref := r.regAddr + "/" + repo + ":1"
	ws := t.TempDir()
	for _, run := range []string{"cold", "warm"} {
		t.Run(run, func(t *testing.T) {
			_, _ = a.Docker().ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true})
			e.Front.ResetLog()
			in := r.inputs(ref, a)
			in["cache-path"] = ".cache/ghcr-pull"
			res := e.RunAction(t, in, "GITHUB_WORKSPACE="+ws)
			assertNoSecretLeak(t, res, canary)
			if res.ExitCode != 0 {
				t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, lastLinesOf(a.DockerdLog(), 8))
			}
			if out := runOnHost(t, a, ref); !strings.Contains(out, "relayed-ok") {
				t.Errorf("the image on %s printed %q", a.Name, out)
			}
			checkCacheLayout(t, filepath.Join(ws, ".cache", "ghcr-pull"), ref, img)
			blobs, manifests := upstreamGets(e, repo)
			if run == "warm" && len(blobs) != 0 {
				t.Errorf("the warm run fetched blobs upstream: %v", blobs)
			}
			t.Logf("%s run: upstream blob GETs %v, manifests %v", run, blobs, manifests)
			assertHostClean(t, a)
		})
	}
	_, _ = a.Docker().ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true})
}
