package e2e

import (
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

// pushNodeImage pushes a random image whose config names this machine's
// platform, as real images do (random ones name none), and returns its
// digest.
func pushNodeImage(t testing.TB, e *Env, repo, tag string, layerSize, layers int64) string {
	t.Helper()
	img, err := random.Image(layerSize, layers)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(e.Host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	return e.pushImageAs(t, ref, withPlatform(t, img))
}

// withPlatform is img with this machine's platform in its config:
// containerd matches an image's platform against the node's.
func withPlatform(t testing.TB, img v1.Image) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// ctrImages lists the host's k8s.io images as "ref digest" pairs.
func ctrImages(t *testing.T, h *RemoteHost) map[string]string {
	t.Helper()
	out := map[string]string{}
	lines := strings.Split(strings.TrimSpace(h.Ctr(t, "-n", "k8s.io", "images", "ls")), "\n")
	for _, l := range lines[1:] { // REF TYPE DIGEST SIZE PLATFORMS LABELS
		if f := strings.Fields(l); len(f) >= 3 {
			out[f[0]] = f[2]
		}
	}
	return out
}

// assertUnpacked checks that ref is unpacked for the CRI plugin's
// snapshotter: `ctr images check` says so, and the snapshots exist.
func assertUnpacked(t *testing.T, h *RemoteHost, ref string, layers int) {
	t.Helper()
	check := h.Ctr(t, "-n", "k8s.io", "images", "check", "--quiet=false")
	found := false
	for _, l := range strings.Split(check, "\n") {
		f := strings.Fields(l)
		// REF TYPE DIGEST STATUS SIZE UNPACKED
		if len(f) > 0 && f[0] == ref {
			found = true
			if f[len(f)-1] != "true" || !strings.Contains(l, "complete") {
				t.Errorf("ctr images check: %s", l)
			}
		}
	}
	if !found {
		t.Errorf("ctr images check does not list %s:\n%s", ref, check)
	}
	snaps := h.Ctr(t, "-n", "k8s.io", "snapshots", "--snapshotter", ContainerdSnapshotter, "ls")
	if n := strings.Count(snaps, "Committed"); n < layers {
		t.Errorf("%d committed %s snapshots, want at least %d:\n%s", n, ContainerdSnapshotter, layers, snaps)
	}
}

func TestContainerd(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/ctrd-private")
	n := StartRemoteHost(t, "ca", HostSpec{Kind: WithContainerd})
	s := sshRun{e: e, regAddr: n.ExposeOnHost(t, e.Host)}
	privDigest := pushNodeImage(t, e, "acme/ctrd-private", "1", 256<<10, 3)
	pubDigest := e.PushRandomImage(t, "acme/ctrd-public", "1")
	e.Front.SetPublic("acme/ctrd-public")

	t.Run("pull into containerd's k8s.io namespace, unpacked", func(t *testing.T) {
		ref := s.regAddr + "/acme/ctrd-private:1"
		res := e.RunAction(t, s.inputs("acme/ctrd-private", n))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s\n%s\n%s", res.ExitCode, res.Stdout, res.Stderr, lastLinesOf(n.ContainerdLog(), 10))
		}
		if got := ctrImages(t, n)[ref]; got != privDigest {
			t.Errorf("k8s.io has %s at %q, want the pushed %s", ref, got, privDigest)
		}
		assertUnpacked(t, n, ref, 3)
		rs := results(t, res)
		if len(rs) != 1 {
			t.Fatalf("results = %v", rs)
		}
		r := rs[0]
		if r["host"] != n.Addr() || r["runtime"] != "containerd" || r["namespace"] != "k8s.io" || r["auth_mode"] != "token" ||
			r["digest"] != privDigest || r["image_ref"] != s.regAddr+"/acme/ctrd-private@"+privDigest || r["pulled"] != true || r["platform"] != "linux/"+runtime.GOARCH {
			t.Errorf("result = %v", r)
		}
		assertNoSecretLeak(t, res, canary)
		// Again: containerd has that image, nothing new.
		res = e.RunAction(t, s.inputs("acme/ctrd-private", n))
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["pulled"] != false {
			t.Errorf("second pull: exit %d, pulled=%v", res.ExitCode, rs[0]["pulled"])
		}
	})

	t.Run("rejected credentials on a public repository fall back on the node", func(t *testing.T) {
		ref := s.regAddr + "/acme/ctrd-public:1"
		in := s.inputs("acme/ctrd-public", n)
		in["password"] = "wrong-" + canary
		res := e.RunAction(t, in)
		if res.ExitCode != 0 || res.Outputs["auth-mode"] != "anonymous" || res.Outputs["fallback-used"] != "true" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		r := results(t, res)[0]
		if r["host"] != n.Addr() || r["runtime"] != "containerd" || r["fallback_used"] != true || r["auth_mode"] != "anonymous" || r["digest"] != pubDigest {
			t.Errorf("per-host result = %v", r)
		}
		if got := ctrImages(t, n)[ref]; got != pubDigest {
			t.Errorf("k8s.io has %s at %q, want %s", ref, got, pubDigest)
		}
		assertNoSecretLeak(t, res, "wrong-"+canary)
	})

	// A token server that refuses containerd's OAuth2 POST (Harbor 1.9
	// answered 403) while the runner's GET probe succeeds: the credentials
	// are rejected by containerd itself, and the node falls back alone.
	t.Run("containerd rejects what the probe accepted: fallback on the node", func(t *testing.T) {
		e.Front.SetOAuthStatus(http.StatusForbidden)
		defer e.Front.SetOAuthStatus(0)
		e.Front.AddUser("deployer", canary, false, "acme/ctrd-private", "acme/ctrd-public")
		defer e.Front.AddUser("deployer", canary, false, "acme/ctrd-private")
		in := s.inputs("acme/ctrd-public", n)
		res := e.RunAction(t, in)
		if res.ExitCode != 0 || res.Outputs["auth-mode"] != "anonymous" || res.Outputs["fallback-used"] != "true" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		r := results(t, res)[0]
		if r["runtime"] != "containerd" || r["fallback_used"] != true || r["digest"] != pubDigest ||
			!strings.Contains(r["credential_error"].(string), "403 Forbidden") || !strings.Contains(r["credential_error"].(string), "from the daemon") {
			t.Errorf("per-host result = %v", r)
		}
		if !strings.Contains(res.Stdout, "the daemon on "+escapeProp(n.Addr())) && !strings.Contains(res.Stdout, "the daemon on "+n.Addr()) {
			t.Errorf("the fallback warning does not name the node:\n%s", res.Stdout)
		}
		assertNoSecretLeak(t, res, canary)
	})

	t.Run("the node holds no copy of the secret", func(t *testing.T) {
		needles := append(secretForms("deployer", canary), secretForms("deployer", "wrong-"+canary)...)
		if found := n.FindInFiles(needles...); len(found) > 0 {
			t.Errorf("secret found on the node: %v", found)
		}
		// Stream-local channels only: not one command ran on the node.
		if cmds := n.Commands(); len(cmds) > 0 {
			t.Errorf("commands ran on the node: %q", cmds)
		}
	})

	t.Run("a missing containerd socket is named", func(t *testing.T) {
		in := s.inputs("acme/ctrd-public", n)
		in["remote-runtime"] = "containerd"
		in["remote-containerd-socket"] = "/run/k3s/containerd/containerd.sock"
		res := e.RunAction(t, in)
		if res.ExitCode != 1 || !strings.Contains(res.Stdout, "/run/k3s/containerd/containerd.sock") || !strings.Contains(res.Stdout, "remote-containerd-socket") {
			t.Fatalf("exit %d, want 1 naming the socket and the input:\n%s", res.ExitCode, res.Stdout)
		}
	})

	t.Run("neither socket: the error names both paths", func(t *testing.T) {
		in := s.inputs("acme/ctrd-public", n)
		in["remote-containerd-socket"] = "/run/nowhere/containerd.sock"
		res := e.RunAction(t, in)
		if res.ExitCode != 1 || !strings.Contains(res.Stdout, "/var/run/docker.sock") || !strings.Contains(res.Stdout, "/run/nowhere/containerd.sock") {
			t.Fatalf("exit %d, want 1 naming both paths:\n%s", res.ExitCode, res.Stdout)
		}
	})

	t.Run("one Docker host and one containerd host in one step", func(t *testing.T) {
		d := StartRemoteHost(t, "cd", HostSpec{})
		d.AuthorizeKey(t, n.ClientSigner().PublicKey())
		repo := "acme/ctrd-mixed"
		digest := e.PushRandomImage(t, repo, "1")
		e.Front.AddUser("mixer", canary, false, repo)
		in := s.inputs(repo, d, n)
		in["username"] = "mixer"
		in["ssh-key"] = n.ClientKeyPEM()
		res := e.RunAction(t, in)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		ref := s.regAddr + "/" + repo + ":1"
		if !contains(remoteHas(t, d, ref), s.regAddr+"/"+repo+"@"+digest) {
			t.Errorf("image not in the Docker host's daemon")
		}
		if got := ctrImages(t, n)[ref]; got != digest {
			t.Errorf("k8s.io on the containerd host has %s at %q, want %s", ref, got, digest)
		}
		rs := results(t, res)
		if len(rs) != 2 {
			t.Fatalf("results = %v", rs)
		}
		want := map[string]string{d.Addr(): "docker", n.Addr(): "containerd"}
		for _, r := range rs {
			host, _ := r["host"].(string)
			if r["runtime"] != want[host] || r["digest"] != digest || r["auth_mode"] != "token" || r["pulled"] != true {
				t.Errorf("result for %s = %v", host, r)
			}
			if (r["namespace"] == "k8s.io") != (want[host] == "containerd") {
				t.Errorf("namespace for %s = %v", host, r["namespace"])
			}
		}
		if res.Outputs["auth-mode"] != "token" || res.Outputs["digest"] != digest {
			t.Errorf("outputs = %v", res.Outputs)
		}
	})
}
