package e2e

import (
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// TestPinnedFleet moves the tag right after the runner's probe (a push
// between the probe and the pulls). Each host then either holds exactly
// the probed digest, under the user's tag, or fails naming the drift; the
// step never reports one digest for a split fleet. Docker hosts are
// pulled by digest and tagged, so they get the probed image; containerd
// (CRI has no tag call) is pulled by tag and caught by the digest check.
// The Docker daemons present only the probe's bearer token to the
// registry, never Basic credentials.
func TestPinnedFleet(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/pin")
	d := StartRemoteHost(t, "pd", HostSpec{})
	c := StartRemoteHost(t, "pc", HostSpec{Kind: WithContainerd})
	c.AuthorizeKey(t, d.ClientSigner().PublicKey())
	s := sshRun{e: e, regAddr: d.ExposeOnHost(t, e.Host)}
	probed := pushNodeImage(t, e, "acme/pin", "1", 64<<10, 2)

	// The probe's HEAD of the tag is the first manifest request for the
	// tag: right after it, the tag moves to another image.
	var moved string
	e.Front.ResetLog() // before Inject: it clears faults too
	e.Front.Inject(ghcrsim.Fault{Match: "/v2/acme/pin/manifests/1", After: func() {
		moved = pushNodeImage(t, e, "acme/pin", "1", 64<<10, 2)
	}})
	in := s.inputs("acme/pin", d, c)
	res := e.RunAction(t, in)
	if moved == "" || moved == probed {
		t.Fatalf("the tag was not moved after the probe (probed %s, moved %s); exit %d\n%s", probed, moved, res.ExitCode, res.Stdout)
	}
	if res.ExitCode != 1 {
		t.Fatalf("exit %d, want 1 (the containerd host drifted)\n%s", res.ExitCode, res.Stdout)
	}
	if res.Outputs["digest"] != probed {
		t.Errorf("digest output %q, want the probed %s", res.Outputs["digest"], probed)
	}
	ref := s.regAddr + "/acme/pin:1"
	for _, r := range results(t, res) {
		switch r["host"] {
		case d.Addr():
			if r["error"] != nil || r["digest"] != probed {
				t.Errorf("docker host: %v", r)
			}
			if got := remoteHas(t, d, ref); !containsDigest(got, probed) || containsDigest(got, moved) {
				t.Errorf("docker host holds %s as %v, want only the probed %s", ref, got, probed)
			}
		case c.Addr():
			msg, _ := r["error"].(string)
			if !strings.Contains(msg, "drifted") || !strings.Contains(msg, probed) || !strings.Contains(msg, moved) || r["digest"] != "" {
				t.Errorf("containerd host: %v, want a drift error naming %s and %s and no digest", r, probed, moved)
			}
		default:
			t.Errorf("unexpected result %v", r)
		}
	}

	// Who presented what: the runner's probe sends Basic credentials to
	// the token endpoint (its user agent is ghcr-pull); the Docker host's
	// daemon presents the probe's bearer token and never Basic.
	var dockerd, dockerdBearer int
	for _, r := range e.Front.Requests() {
		if !strings.HasPrefix(r.UserAgent, "docker/") {
			continue
		}
		dockerd++
		if r.BasicUser != "" || r.BasicPassword != "" {
			t.Errorf("dockerd sent Basic credentials: %+v", r)
		}
		if r.Bearer {
			dockerdBearer++
		}
	}
	if dockerd == 0 || dockerdBearer == 0 {
		t.Errorf("dockerd made %d requests, %d with a bearer token; want some, all without Basic", dockerd, dockerdBearer)
	}
	t.Logf("requests: dockerd %d (%d bearer, 0 Basic)", dockerd, dockerdBearer)
	for _, h := range []*RemoteHost{d, c} {
		if found := h.FindInFiles(secretForms("deployer", canary)...); len(found) > 0 {
			t.Errorf("secret found on %s: %v", h.Name, found)
		}
	}
	if found := d.FindInFiles(canary); len(found) > 0 || strings.Contains(d.DockerdLog(), canary) {
		t.Errorf("the docker host's daemon saw the secret: %v", found)
	}
}

func containsDigest(repoDigests []string, digest string) bool {
	for _, rd := range repoDigests {
		if strings.HasSuffix(rd, "@"+digest) {
			return true
		}
	}
	return false
}
