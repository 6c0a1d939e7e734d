package e2e

// ssh-transfer: relay on containerd hosts (Kubernetes nodes without the
// kubelet) that have no route to the registry: the runner fetches, the
// hosts' containerd pull through the SSH connection with CRI, and the
// image is left under the user's names in k8s.io.

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/cri"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
)

// criInspect is the host's CRI image service's answer for ref: what the
// kubelet sees.
func criInspect(t *testing.T, h *RemoteHost, ref string) (image.Info, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := cri.New(ctx, func(ctx context.Context) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", h.ContainerdSocket())
	}, nil)
	if err != nil {
		t.Fatalf("%s: CRI: %v", h.Name, err)
	}
	defer d.Close()
	return d.Inspect(ctx, ref)
}

// assertCtrdHostClean: no credential in any form on the host (files under
// its directory, containerd's config, root and state included; process
// command lines and environments), not one command run (stream-local
// channels only), no loopback name in k8s.io, no forward listening.
func assertCtrdHostClean(t *testing.T, h *RemoteHost) {
	t.Helper()
	needles := append(secretForms("deployer", canary), secretForms("deployer", "wrong-"+canary)...)
	if found := h.FindInFiles(needles...); len(found) > 0 {
		t.Errorf("%s: secret found: %v", h.Name, found)
	}
	if cmds := h.Commands(); len(cmds) > 0 {
		t.Errorf("%s: commands ran on the host: %q", h.Name, cmds)
	}
	for n := range ctrImages(t, h) {
		if strings.HasPrefix(n, "127.0.0.1:") {
			t.Errorf("%s: the relay's name %s is left in k8s.io", h.Name, n)
		}
	}
	assertNoForward(t, h)
}

// ctrRun runs ref on h's containerd with no network (a network namespace
// of its own, loopback only: ctr run without --net-host) and returns its
// output.
func ctrRun(t *testing.T, h *RemoteHost, ref string) string {
	t.Helper()
	return h.Ctr(t, "-n", "k8s.io", "run", "--rm", ref, "relayctr-run-"+h.Name)
}

func TestRelayContainerd(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/rc-private", "acme/rc-fleet")
	gw := StartRemoteHost(t, "kgw", HostSpec{Kind: NoRuntime})
	r := relayRun{e: e, regAddr: gw.ExposeOnHost(t, e.Host)}
	a := StartRemoteHost(t, "ka", HostSpec{Kind: WithContainerd, Net: Isolated})
	b := StartRemoteHost(t, "kb", HostSpec{Kind: WithContainerd, Net: Isolated})
	b.AuthorizeKey(t, a.ClientSigner().PublicKey())

	v1img, _ := relayImage(t, 512<<10)
	privDigest := r.push(t, "acme/rc-private", "1", v1img)
	pubImg, _ := relayImage(t, 64<<10)
	pubDigest := r.push(t, "acme/rc-public", "1", pubImg)
	e.Front.SetPublic("acme/rc-public")
	private := r.regAddr + "/acme/rc-private:1"
	pinned := r.regAddr + "/acme/rc-private@" + privDigest

	t.Run("isolated: a direct CRI pull cannot reach the registry", func(t *testing.T) {
		for _, h := range []*RemoteHost{a, b} {
			out, err := exec.Command("ip", "-n", h.Namespace, "route", "get", gw.HostAddr()).CombinedOutput()
			if err == nil {
				t.Fatalf("%s has a route to the registry's address %s: %s", h.Name, gw.HostAddr(), out)
			}
		}
		in := r.inputs(private, a)
		in["ssh-transfer"] = "direct"
		in["retries"] = "0"
		res := e.RunAction(t, in)
		if res.ExitCode != 1 {
			t.Fatalf("exit %d, want 1: the host reached the registry\n%s", res.ExitCode, res.Stdout)
		}
		if rs := results(t, res); rs[0]["runtime"] != "containerd" {
			t.Errorf("results = %v, want a containerd host", rs)
		}
		if names := ctrImages(t, a); len(names) != 0 {
			t.Errorf("k8s.io holds %v after a failed direct pull", names)
		}
	})

	t.Run("a fresh host, by tag, private image (remote-runtime auto)", func(t *testing.T) {
		res := e.RunAction(t, r.inputs(private, a))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, lastLinesOf(a.ContainerdLog(), 8))
		}
		rs := results(t, res)
		if len(rs) != 1 || rs[0]["host"] != a.Addr() || rs[0]["runtime"] != "containerd" || rs[0]["namespace"] != "k8s.io" ||
			rs[0]["auth_mode"] != "token" || rs[0]["digest"] != privDigest || rs[0]["pulled"] != true || rs[0]["platform"] != "linux/"+runtime.GOARCH {
			t.Fatalf("results = %v", rs)
		}
		if rs[0]["image_ref"] != pinned || res.Outputs["image-ref"] != pinned {
			t.Errorf("image_ref %v (output %q), want %s", rs[0]["image_ref"], res.Outputs["image-ref"], pinned)
		}
		// The names a direct CRI pull leaves: the user's tag and
		// repository@digest at the probed digest, and the image ID.
		cfg, _ := v1img.ConfigName()
		names := ctrImages(t, a)
		if names[private] != privDigest || names[pinned] != privDigest || names[cfg.String()] != privDigest || len(names) != 3 {
			t.Errorf("k8s.io holds %v, want %s and %s (and the ID record) at %s", names, private, pinned, privDigest)
		}
		assertUnpacked(t, a, private, 2)
		// The kubelet's view: CRI finds the image by each reference.
		for _, ref := range []string{private, pinned} {
			if info, err := criInspect(t, a, ref); err != nil || info.ID != cfg.String() {
				t.Errorf("CRI ImageStatus %s = %+v, %v; want the image %s", ref, info, err, cfg)
			}
		}
		if n, _ := rs[0]["relayed_bytes"].(float64); n < 512<<10 {
			t.Errorf("relayed_bytes %v, want at least the app layer", rs[0]["relayed_bytes"])
		}
		assertNoSecretLeak(t, res, canary)
		assertNoRelayCache(t, res)
		assertCtrdHostClean(t, a)

		// Again: the host has every layer, nothing but the manifest travels.
		r.rerunSendsManifestOnly(t, e, private, a)
		assertCtrdHostClean(t, a)
	})

	t.Run("by digest (remote-runtime containerd): held by repository@digest, image_ref the same", func(t *testing.T) {
		in := r.inputs(pinned, b)
		in["remote-runtime"] = "containerd"
		in["ssh-key"] = a.ClientKeyPEM()
		res := e.RunAction(t, in)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		if rs[0]["digest"] != privDigest || rs[0]["image_ref"] != pinned || rs[0]["runtime"] != "containerd" {
			t.Errorf("results = %v, want digest %s and image_ref %s", rs, privDigest, pinned)
		}
		cfg, _ := v1img.ConfigName()
		if names := ctrImages(t, b); names[pinned] != privDigest || len(names) != 2 {
			t.Errorf("k8s.io holds %v, want %s (and the ID record)", names, pinned)
		}
		if info, err := criInspect(t, b, pinned); err != nil || info.ID != cfg.String() {
			t.Errorf("CRI ImageStatus %s = %+v, %v", pinned, info, err)
		}
		assertCtrdHostClean(t, b)
	})

	t.Run("rejected credentials on a public image fall back", func(t *testing.T) {
		pub := r.regAddr + "/acme/rc-public:1"
		in := r.inputs(pub, b)
		in["ssh-key"] = a.ClientKeyPEM()
		in["password"] = "wrong-" + canary
		res := e.RunAction(t, in)
		if res.ExitCode != 0 || res.Outputs["fallback-used"] != "true" || res.Outputs["auth-mode"] != "anonymous" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		if rs := results(t, res); rs[0]["digest"] != pubDigest || rs[0]["fallback_used"] != true || rs[0]["runtime"] != "containerd" {
			t.Errorf("results = %v", rs)
		}
		if got := ctrImages(t, b)[pub]; got != pubDigest {
			t.Errorf("k8s.io has %s at %q, want %s", pub, got, pubDigest)
		}
		assertNoSecretLeak(t, res, "wrong-"+canary)
		assertCtrdHostClean(t, b)
	})

	t.Run("the relayed images run with no network", func(t *testing.T) {
		for _, run := range []struct {
			h   *RemoteHost
			ref string
		}{{a, private}, {b, pinned}} {
			if out := ctrRun(t, run.h, run.ref); !strings.Contains(out, "relayed-ok") {
				t.Errorf("ctr run %s on %s printed %q", run.ref, run.h.Name, out)
			}
		}
	})

	t.Run("two hosts at once: one upstream fetch per blob", func(t *testing.T) {
		img, _ := relayImage(t, 256<<10)
		r.push(t, "acme/rc-fleet", "1", img)
		e.Front.ResetLog()
		in := r.inputs(r.regAddr+"/acme/rc-fleet:1", a, b)
		res := e.RunAction(t, in)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		gets := map[string]int{}
		for _, q := range e.Front.Requests() {
			if q.Method == "GET" && strings.Contains(q.Path, "/acme/rc-fleet/blobs/") {
				gets[q.Path[strings.LastIndex(q.Path, "/")+1:]]++
			}
		}
		m, _ := img.Manifest()
		// The busybox layer is on both hosts already; the config and the
		// app layer are new to both.
		for _, d := range []string{m.Config.Digest.String(), m.Layers[1].Digest.String()} {
			if gets[d] != 1 {
				t.Errorf("blob %s fetched upstream %d times, want once for two hosts (all: %v)", d, gets[d], gets)
			}
		}
		for d, n := range gets {
			if n != 1 {
				t.Errorf("blob %s fetched upstream %d times", d, n)
			}
		}
		rs := results(t, res)
		if len(rs) != 2 {
			t.Fatalf("results = %v", rs)
		}
		for _, rr := range rs {
			if rr["error"] != nil || rr["digest"] == "" || rr["runtime"] != "containerd" {
				t.Errorf("result %v", rr)
			}
		}
		for _, h := range []*RemoteHost{a, b} {
			assertCtrdHostClean(t, h)
		}
	})

	t.Run("an update sends only the changed layer", func(t *testing.T) {
		v2img, app := relayImage(t, 1<<20)
		v2Digest := r.push(t, "acme/rc-private", "1", v2img)
		res := e.RunAction(t, r.inputs(private, a))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		changed, _ := app.Size()
		sent, _ := rs[0]["relayed_bytes"].(float64)
		t.Logf("update: the relay sent %.0f bytes for a changed layer of %d (%.3f×)", sent, changed, sent/float64(changed))
		if sent <= 0 || sent > 1.2*float64(changed) {
			t.Errorf("the relay sent %.0f bytes, want at most 1.2× the changed layer (%d)", sent, changed)
		}
		names := ctrImages(t, a)
		if names[private] != v2Digest || names[r.regAddr+"/acme/rc-private@"+v2Digest] != v2Digest {
			t.Errorf("the user's tag does not name the update: %v", names)
		}
		if out := ctrRun(t, a, private); !strings.Contains(out, "relayed-ok") {
			t.Errorf("ctr run of the update printed %q", out)
		}
		assertCtrdHostClean(t, a)
	})

	t.Run("two tags of one digest in one step: one pull, both tags", func(t *testing.T) {
		r.twoTagsOneDigest(t, containerdRelayed, "acme/rc-fleet", b)
	})

	t.Run("a layer larger than relay-cache-max: named, classified, the cache removed", func(t *testing.T) {
		r.cacheBound(t, containerdRelayed, "acme/rc-fleet", b)
	})

	t.Run("a host that drops mid-transfer fails, the other finishes", func(t *testing.T) {
		r.dropMidTransfer(t, containerdRelayed, "acme/rc-fleet", a, b)
	})
}

// containerdRelayed: a containerd host; k8s.io records the digest each
// name points at.
var containerdRelayed = relayedKind{
	holds: func(t *testing.T, h *RemoteHost, ref, digest string) error {
		got, ok := ctrImages(t, h)[ref]
		if !ok {
			return fmt.Errorf("k8s.io on %s has no %s", h.Name, ref)
		}
		if digest != "" && got != digest {
			return fmt.Errorf("k8s.io on %s has %s at %q, want %s", h.Name, ref, got, digest)
		}
		return nil
	},
	clean: assertCtrdHostClean,
}
