package e2e

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// fromRuntime lists a front's requests made by a host's runtime (not the
// runner's probe), with the blob requests among them.
func fromRuntime(reqs []ghcrsim.Request) (all, blobs int) {
	for _, r := range reqs {
		if strings.HasPrefix(r.UserAgent, "ghcr-pull") {
			continue
		}
		all++
		if strings.Contains(r.Path, "/blobs/") {
			blobs++
		}
	}
	return all, blobs
}

// renamedAgent is reqs with every user agent counted as a runtime's.
func renamedAgent(reqs []ghcrsim.Request) []ghcrsim.Request {
	out := make([]ghcrsim.Request, len(reqs))
	for i, r := range reqs {
		r.UserAgent = "any"
		out[i] = r
	}
	return out
}

// TestMirrorsContainerd: a containerd host (CRI, over SSH) is pointed at
// the mirror that serves the digest, as Docker hosts are: it pulls
// <mirror>/<repo>@<digest> with the mirror's own credentials or none, and
// k8s.io ends with the user's names (the tag and <repository>@<digest>)
// and not the mirror's. docker-registry is upstream and mirror, each
// behind its own front, whose logs count the requests: upstream gets no
// request (no blob) from containerd when the mirror serves; a mirror
// that answers another digest for the tag gets none; a mirror that needs
// its own credentials gets only those, and the upstream password reaches
// neither the mirror nor any file or process of the host. With
// ssh-transfer: relay the runner's relay fetches from the mirror, and the
// host ends with the same names (neither the mirror's nor the relay's).
func TestMirrorsContainerd(t *testing.T) {
	e := Start(t)
	t.Cleanup(e.Front.ResetLog)
	e.Front.AddUser("upstream-user", canary, false, "*")
	const mirrorSecret = "mirror-secret-c4d2e8"
	n := StartRemoteHost(t, "cm", HostSpec{Kind: WithContainerd})
	regAddr := n.ExposeOnHost(t, e.Host)
	s := sshRun{e: e, regAddr: regAddr}

	for i, tc := range []struct {
		name, kind string // kind: "same", "other" (another image under the tag), "private" (needs its own credentials)
		served     bool
		relay      bool
	}{
		{name: "a mirror that serves the digest serves the host", kind: "same", served: true},
		{name: "a mirror with another digest for the tag is never used", kind: "other"},
		{name: "a mirror with its own credentials gets only those", kind: "private", served: true},
		{name: "relayed: the relay fetches from the mirror, the host gets the user's names", kind: "private", served: true, relay: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := "mirrors/ctrd" + string(rune('a'+i))
			digest := pushNodeImage(t, e, repo, "1", 64<<10, 2)
			img, err := remote.Image(mustRef(t, e.Host+"/"+repo+":1"), remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}))
			if err != nil {
				t.Fatal(err)
			}
			m := e.startMirror(t)
			if tc.kind == "other" {
				other, _ := random.Image(1024, 1)
				e.pushTo(t, m.host, repo+":1", other)
			} else {
				e.pushTo(t, m.host, repo+":1", img)
			}
			if tc.kind == "private" {
				m.front.AddUser("mirror-user", mirrorSecret, false, repo)
			} else {
				m.front.SetPublic(repo)
			}
			mirrorAddr := n.ExposeOnHost(t, m.host)
			m.front.ResetLog()
			e.Front.ResetLog()

			in := s.inputs(repo, n)
			in["username"], in["mirrors"] = "upstream-user", regAddr+"=http://"+mirrorAddr
			if tc.kind == "private" {
				in["mirror-username"], in["mirror-password"] = "mirror-user", mirrorSecret
			}
			if tc.relay {
				in["ssh-transfer"] = "relay"
			}
			res := e.RunAction(t, in)
			if res.ExitCode != 0 {
				t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, lastLinesOf(n.ContainerdLog(), 10))
			}
			r := results(t, res)[0]
			user := regAddr + "/" + repo + ":1"
			pinned := regAddr + "/" + repo + "@" + digest
			if r["runtime"] != "containerd" || r["digest"] != digest || r["image_ref"] != pinned {
				t.Errorf("result %v", r)
			}
			names := ctrImages(t, n)
			if names[user] != digest || names[pinned] != digest {
				t.Errorf("k8s.io lacks %s and %s at %s: %v", user, pinned, digest, names)
			}
			for name := range names {
				if strings.HasPrefix(name, mirrorAddr+"/") || strings.HasPrefix(name, "127.0.0.1:") {
					t.Errorf("the name %s stayed in k8s.io", name)
				}
			}
			if info, err := criInspect(t, n, user); err != nil || info.Digest(pinned, "") != digest {
				t.Errorf("CRI (the kubelet's view) of %s: %+v, %v", user, info, err)
			}
			upAll, upBlobs := fromRuntime(e.Front.Requests())
			mAll, mBlobs := fromRuntime(m.front.Requests())
			t.Logf("upstream: %d requests (%d from containerd, %d blobs); mirror: %d from containerd (%d blobs)",
				len(e.Front.Requests()), upAll, upBlobs, mAll, mBlobs)
			if tc.relay {
				// The relay's fetches are the runner's: count every blob.
				_, upBlobs = fromRuntime(renamedAgent(e.Front.Requests()))
				_, mBlobs = fromRuntime(renamedAgent(m.front.Requests()))
				t.Logf("relayed: upstream %d blob requests, mirror %d", upBlobs, mBlobs)
			}
			if tc.served {
				if r["served_by"] != mirrorAddr {
					t.Errorf("served_by %v, want %s", r["served_by"], mirrorAddr)
				}
				if upAll != 0 || upBlobs != 0 || mBlobs == 0 {
					t.Errorf("containerd asked upstream %d times (%d blobs) and the mirror for %d blobs; want none upstream", upAll, upBlobs, mBlobs)
				}
			} else {
				if r["served_by"] != nil || !strings.Contains(res.Summary, "not trusted, not used") {
					t.Errorf("served_by %v; summary:\n%s", r["served_by"], res.Summary)
				}
				if mAll != 0 || upBlobs == 0 {
					t.Errorf("containerd asked the distrusted mirror %d times, upstream for %d blobs", mAll, upBlobs)
				}
			}
			for _, q := range m.front.Requests() {
				if q.BasicPassword == canary || q.BasicUser == "upstream-user" {
					t.Errorf("the mirror's front received the upstream credentials (%s %s)", q.Method, q.Path)
				}
				if q.BasicUser != "" && (tc.kind != "private" || q.BasicUser != "mirror-user") {
					t.Errorf("the mirror's front received credentials of %q", q.BasicUser)
				}
			}
			for _, q := range e.Front.Requests() {
				if q.BasicPassword == mirrorSecret {
					t.Errorf("upstream received the mirror's password")
				}
			}
			needles := append(secretForms("upstream-user", canary), secretForms("mirror-user", mirrorSecret)...)
			if found := n.FindInFiles(needles...); len(found) > 0 {
				t.Errorf("a secret is on the host: %v", found)
			}
			assertNoSecretLeak(t, res, canary)
			assertNoSecretLeak(t, res, mirrorSecret)
		})
	}
}
