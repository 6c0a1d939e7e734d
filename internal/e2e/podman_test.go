package e2e

import (
	"context"
	"os"
	"runtime"
	"strings"
	"testing"
)

// podmanHas is the RepoDigests of ref in the host's Podman, nil when absent.
func podmanHas(t *testing.T, h *RemoteHost, ref string) []string {
	t.Helper()
	cli, err := h.Podman()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	res, err := cli.ImageInspect(context.Background(), ref)
	if err != nil {
		return nil
	}
	return res.RepoDigests
}

// podmanImageID is ref's image ID in the host's Podman, "" when absent.
func podmanImageID(t testing.TB, h *RemoteHost, ref string) string {
	t.Helper()
	cli, err := h.Podman()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	res, err := cli.ImageInspect(context.Background(), ref)
	if err != nil {
		return ""
	}
	return res.ID
}

// Rootful Podman as a runtime of its own, through its Docker-compatible
// socket at /run/podman/podman.sock, found by remote-runtime auto.
func TestPodman(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/pm-private")
	p := StartRemoteHost(t, "pm", HostSpec{Kind: WithPodman})
	s := sshRun{e: e, regAddr: p.ExposeOnHost(t, e.Host)}
	privDigest := pushNodeImage(t, e, "acme/pm-private", "1", 64<<10, 2)
	pubDigest := pushNodeImage(t, e, "acme/pm-public", "1", 64<<10, 1)
	e.Front.SetPublic("acme/pm-public")

	t.Run("private image, token-auth registry: Podman pulls with username and password", func(t *testing.T) {
		ref := s.regAddr + "/acme/pm-private:1"
		res := e.RunAction(t, s.inputs("acme/pm-private", p))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, lastLinesOf(p.PodmanLog(), 10))
		}
		if !contains(podmanHas(t, p, ref), s.regAddr+"/acme/pm-private@"+privDigest) {
			t.Errorf("Podman has %s at %v, want the pushed %s", ref, podmanHas(t, p, ref), privDigest)
		}
		rs := results(t, res)
		if len(rs) != 1 {
			t.Fatalf("results = %v", rs)
		}
		r := rs[0]
		if r["host"] != p.Addr() || r["runtime"] != "podman" || r["auth_mode"] != "token" || r["fallback_used"] != false ||
			r["digest"] != privDigest || r["pulled"] != true || r["platform"] != "linux/"+runtime.GOARCH {
			t.Errorf("result = %v", r)
		}
		assertNoSecretLeak(t, res, canary)
		// Again: Podman has that digest; pulled is false.
		res = e.RunAction(t, s.inputs("acme/pm-private", p))
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["pulled"] != false || rs[0]["runtime"] != "podman" {
			t.Errorf("second pull: exit %d, result %v", res.ExitCode, rs)
		}
	})

	t.Run("pinned by digest, and a tag pointed at the probed digest", func(t *testing.T) {
		in := s.inputs("acme/pm-public", p)
		in["image"] = s.regAddr + "/acme/pm-public@" + pubDigest
		res := e.RunAction(t, in)
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["digest"] != pubDigest || rs[0]["pulled"] != true {
			t.Fatalf("by digest: exit %d, results %v\n%s", res.ExitCode, rs, res.Stdout)
		}
		res = e.RunAction(t, s.inputs("acme/pm-public", p))
		rs := results(t, res)
		if res.ExitCode != 0 || rs[0]["digest"] != pubDigest || rs[0]["image_ref"] != s.regAddr+"/acme/pm-public@"+pubDigest {
			t.Fatalf("by tag: exit %d, results %v\n%s", res.ExitCode, rs, res.Stdout)
		}
		// The digest was there: nothing new was pulled, and the tag names it.
		if rs[0]["pulled"] != false {
			t.Errorf("by tag after by digest: pulled = %v", rs[0]["pulled"])
		}
		if tag, dg := podmanImageID(t, p, s.regAddr+"/acme/pm-public:1"), podmanImageID(t, p, s.regAddr+"/acme/pm-public@"+pubDigest); tag == "" || tag != dg {
			t.Errorf("the tag names image %q, the digest %q", tag, dg)
		}
	})

	t.Run("rejected credentials on a public repository fall back", func(t *testing.T) {
		in := s.inputs("acme/pm-public", p)
		in["password"] = "wrong-" + canary
		res := e.RunAction(t, in)
		if res.ExitCode != 0 || res.Outputs["auth-mode"] != "anonymous" || res.Outputs["fallback-used"] != "true" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		r := results(t, res)[0]
		if r["runtime"] != "podman" || r["fallback_used"] != true || r["digest"] != pubDigest {
			t.Errorf("result = %v", r)
		}
		assertNoSecretLeak(t, res, "wrong-"+canary)
	})

	t.Run("not found", func(t *testing.T) {
		in := s.inputs("acme/pm-private", p)
		in["image"] = s.regAddr + "/acme/pm-private:nope"
		res := e.RunAction(t, in)
		r := results(t, res)[0]
		if res.ExitCode != 1 || r["error_class"] != "not-found" || r["fallback_used"] != false {
			t.Errorf("exit %d, result %v\n%s", res.ExitCode, r, res.Stdout)
		}
	})

	t.Run("remote-runtime podman", func(t *testing.T) {
		in := s.inputs("acme/pm-public", p)
		in["remote-runtime"] = "podman"
		res := e.RunAction(t, in)
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["runtime"] != "podman" {
			t.Errorf("exit %d, results %v\n%s", res.ExitCode, rs, res.Stdout)
		}
	})

	t.Run("remote-runtime docker on a Podman-only host names the socket", func(t *testing.T) {
		in := s.inputs("acme/pm-public", p)
		in["remote-runtime"] = "docker"
		res := e.RunAction(t, in)
		if res.ExitCode != 1 || !strings.Contains(res.Stdout, "/var/run/docker.sock") {
			t.Errorf("exit %d, want 1 naming /var/run/docker.sock\n%s", res.ExitCode, res.Stdout)
		}
	})

	t.Run("a host with Docker and Podman: auto takes Docker, podman takes Podman", func(t *testing.T) {
		b := StartRemoteHost(t, "pmb", HostSpec{Kind: WithDockerAndPodman})
		b.AuthorizeKey(t, p.ClientSigner().PublicKey())
		in := s.inputs("acme/pm-private", b)
		in["ssh-key"] = p.ClientKeyPEM()
		ref := s.regAddr + "/acme/pm-private:1"
		res := e.RunAction(t, in)
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["runtime"] != "docker" || rs[0]["pulled"] != true {
			t.Fatalf("auto: exit %d, results %v\n%s", res.ExitCode, rs, res.Stdout)
		}
		if !contains(remoteHas(t, b, ref), s.regAddr+"/acme/pm-private@"+privDigest) || podmanHas(t, b, ref) != nil {
			t.Errorf("auto: Docker has %v, Podman %v; want Docker alone", remoteHas(t, b, ref), podmanHas(t, b, ref))
		}
		in["remote-runtime"] = "podman"
		res = e.RunAction(t, in)
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["runtime"] != "podman" || rs[0]["pulled"] != true {
			t.Fatalf("podman: exit %d, results %v\n%s", res.ExitCode, rs, res.Stdout)
		}
		if !contains(podmanHas(t, b, ref), s.regAddr+"/acme/pm-private@"+privDigest) {
			t.Errorf("podman: Podman has %v", podmanHas(t, b, ref))
		}
		checkNoSecretOnHost(t, b)

		// docs/decisions.md, "Anonymous tokens to daemons too": an
		// anonymous pull hands dockerd the probe's token, so the daemon
		// asks the token endpoint for nothing.
		e.Front.ResetLog()
		anon := s.inputs("acme/pm-public", b)
		anon["ssh-key"], anon["auth"] = p.ClientKeyPEM(), "anonymous"
		res = e.RunAction(t, anon)
		if rs := results(t, res); res.ExitCode != 0 || rs[0]["runtime"] != "docker" || rs[0]["auth_mode"] != "anonymous" || rs[0]["pulled"] != true {
			t.Fatalf("anonymous: exit %d, results %v\n%s", res.ExitCode, rs, res.Stdout)
		}
		var probe, daemon int
		for _, r := range e.Front.Requests() {
			switch {
			case r.Path != "/token":
			case strings.HasPrefix(r.UserAgent, "ghcr-pull"):
				probe++
			default:
				daemon++
				t.Errorf("dockerd fetched a token of its own: %+v", r)
			}
		}
		if probe != 1 {
			t.Errorf("%d probe token requests, want 1", probe)
		}
	})

	t.Run("the host holds no copy of the secret", func(t *testing.T) {
		checkNoSecretOnHost(t, p)
	})
}

// checkNoSecretOnHost: no form of the canaries in the host's files, its
// processes' command lines and environments, Podman's auth file, or the
// commands sessions ran.
func checkNoSecretOnHost(t *testing.T, h *RemoteHost) {
	t.Helper()
	needles := append(secretForms("deployer", canary), secretForms("deployer", "wrong-"+canary)...)
	if found := h.FindInFiles(needles...); len(found) > 0 {
		t.Errorf("secret found on %s: %v", h.Name, found)
	}
	if _, err := os.Stat(h.PodmanAuthFile()); err == nil {
		t.Errorf("Podman wrote an auth file %s", h.PodmanAuthFile())
	}
	for _, c := range h.Commands() {
		if strings.Contains(c, canary) {
			t.Errorf("secret on a command line on %s: %q", h.Name, c)
		}
	}
}
