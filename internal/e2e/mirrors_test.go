package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// testMirror is a second docker-registry with token auth behind its own
// front: a mirror of the world's registry.
type testMirror struct {
	front *ghcrsim.Server
	host  string
}

func (e *Env) startMirror(t *testing.T) *testMirror {
	t.Helper()
	front, host, stop, err := startTokenRegistry(t.TempDir())
	if err != nil {
		skipOrFatal(t, "mirror registry: %v", err)
	}
	t.Cleanup(stop)
	front.AddUser(e.AdminUser, e.AdminPassword, true, "*")
	return &testMirror{front: front, host: host}
}

// push writes img to host/repo:tag as the admin.
func (e *Env) pushTo(t *testing.T, host, repo string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword})); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
}

// fromDaemon counts a front's requests made by a Docker daemon (not the
// runner's probe).
func fromDaemon(reqs []ghcrsim.Request) int {
	n := 0
	for _, r := range reqs {
		if !strings.HasPrefix(r.UserAgent, "ghcr-pull") {
			n++
		}
	}
	return n
}

// TestMirrors: the world's registry as upstream, docker-registry mirrors
// behind their own fronts, the machine's dockerd as the target. A mirror
// serves only the digest upstream resolved; one serving another digest
// for the tag is passed over and the summary says so; when upstream
// answers 429 with Docker Hub's headers, a mirror that needs its own
// credentials resolves and serves, after one that is down; credentials
// reach only their own host; upstream requests are counted in its front's
// log.
func TestMirrors(t *testing.T) {
	e := Start(t)
	t.Cleanup(e.Front.ResetLog) // no injected 429 outlives the test
	e.Front.AddUser("upstream-user", canary, false, "*")
	const mirrorSecret = "mirror-secret-7f3a9c"
	hubQuota := http.Header{"Ratelimit-Limit": {"100;w=21600"}, "Ratelimit-Remaining": {"0;w=21600"}, "Docker-Ratelimit-Source": {"203.0.113.7"}}
	cases := []struct {
		name string
		// mirrors, in order: "same", "other" (another image under the
		// tag), "down", "private" (needs mirror-username/password)
		mirrors     []string
		upstream429 bool
		wantExit    int
		wantServed  int // index of the serving mirror, -1 upstream
		wantInSum   []string
		wantInOut   []string
	}{
		{name: "a mirror that serves the digest serves the daemon", mirrors: []string{"same"}, wantServed: 0,
			wantInSum: []string{"served by mirror"}},
		{name: "a mirror with another digest for the tag is never trusted", mirrors: []string{"other"}, wantServed: -1,
			wantInSum: []string{"⚠️", "not trusted, not used"}},
		{name: "upstream over quota: a mirror down, then one with its own credentials", mirrors: []string{"down", "private"}, upstream429: true, wantServed: 1,
			wantInSum: []string{"did not serve", "unchecked against upstream", "served by mirror"}},
		{name: "upstream over quota and the only mirror down: fails naming the quota", mirrors: []string{"down"}, upstream429: true, wantExit: 1, wantServed: -1,
			wantInOut: []string{"is spent (429 Too Many Requests", "0 of 100 pulls left"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := "mirrors/case" + string(rune('a'+i))
			digest := e.PushRandomImage(t, repo, "1")
			ref := e.Host + "/" + repo + ":1"
			img, err := remote.Image(mustRef(t, ref), remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}))
			if err != nil {
				t.Fatal(err)
			}
			other, _ := random.Image(1024, 1)
			var mirrors []*testMirror
			var lines []string
			for _, kind := range tc.mirrors {
				if kind == "down" {
					// Nothing listens there; the front only keeps an
					// empty log.
					idle, _ := ghcrsim.New(ghcrsim.Options{Handler: http.NotFoundHandler()})
					m := &testMirror{front: idle, host: closedPort(t)}
					mirrors = append(mirrors, m)
					lines = append(lines, e.Host+"="+m.host)
					continue
				}
				m := e.startMirror(t)
				switch kind {
				case "same", "private":
					e.pushTo(t, m.host, repo+":1", img)
				case "other":
					e.pushTo(t, m.host, repo+":1", other)
				}
				if kind == "private" {
					m.front.AddUser("mirror-user", mirrorSecret, false, repo)
				} else {
					m.front.SetPublic(repo)
				}
				mirrors = append(mirrors, m)
				lines = append(lines, e.Host+"="+m.host)
				m.front.ResetLog()
			}
			for _, m := range mirrors {
				mref := m.host + "/" + repo
				t.Cleanup(func() { e.RemoveLocalImage(t, mref+"@"+digest) })
			}
			e.RemoveLocalImage(t, ref)
			t.Cleanup(func() { e.RemoveLocalImage(t, ref) })
			e.Front.ResetLog()
			if tc.upstream429 {
				e.Front.Inject(ghcrsim.Fault{Match: "/manifests/", Status: 429, Header: hubQuota},
					ghcrsim.Fault{Match: "/manifests/", Status: 429, Header: hubQuota})
			}
			inputs := map[string]string{"image": ref, "username": "upstream-user", "password": canary,
				"mirrors": strings.Join(lines, "\n"), "retries": "1"}
			if contains(tc.mirrors, "private") {
				inputs["mirror-username"], inputs["mirror-password"] = "mirror-user", mirrorSecret
			}
			res := e.RunAction(t, inputs)
			if res.ExitCode != tc.wantExit {
				t.Fatalf("exit %d, want %d\n%s", res.ExitCode, tc.wantExit, res.Stdout)
			}
			for _, w := range tc.wantInSum {
				if !strings.Contains(res.Summary, w) {
					t.Errorf("summary lacks %q:\n%s", w, res.Summary)
				}
			}
			for _, w := range tc.wantInOut {
				if !strings.Contains(res.Stdout, w) {
					t.Errorf("log lacks %q:\n%s", w, res.Stdout)
				}
			}
			var results []struct {
				ServedBy   string `json:"served_by"`
				ResolvedBy string `json:"resolved_by"`
				Digest     string `json:"digest"`
				ErrorClass string `json:"error_class"`
			}
			if err := json.Unmarshal([]byte(res.Outputs["results"]), &results); err != nil || len(results) != 1 {
				t.Fatalf("results %q: %v", res.Outputs["results"], err)
			}
			r := results[0]
			upDaemon := fromDaemon(e.Front.Requests())
			t.Logf("upstream requests: %d (%d from the daemon)", len(e.Front.Requests()), upDaemon)
			if tc.wantExit != 0 {
				if r.ErrorClass != "quota" || upDaemon != 0 || len(e.LocalImageDigests(t, ref)) != 0 {
					t.Errorf("class %q, %d daemon requests upstream, image present %v", r.ErrorClass, upDaemon, len(e.LocalImageDigests(t, ref)) != 0)
				}
				assertNoSecretLeak(t, res, canary)
				return
			}
			if r.Digest != digest {
				t.Errorf("digest %s, want %s", r.Digest, digest)
			}
			if tc.wantServed >= 0 {
				m := mirrors[tc.wantServed]
				if r.ServedBy != m.host {
					t.Errorf("served_by %q, want %q", r.ServedBy, m.host)
				}
				if upDaemon != 0 {
					t.Errorf("the daemon made %d requests to upstream; the mirror served", upDaemon)
				}
				if fromDaemon(m.front.Requests()) == 0 {
					t.Errorf("the mirror's front saw no daemon request")
				}
				if !contains(e.LocalImageDigests(t, ref), m.host+"/"+repo+"@"+digest) {
					t.Errorf("the daemon does not hold %s@%s under the tag: %v", m.host+"/"+repo, digest, e.LocalImageDigests(t, ref))
				}
			} else {
				if r.ServedBy != "" || upDaemon == 0 {
					t.Errorf("served_by %q, %d daemon requests upstream; want upstream", r.ServedBy, upDaemon)
				}
				if !contains(e.LocalImageDigests(t, ref), e.Host+"/"+repo+"@"+digest) {
					t.Errorf("the daemon lacks the upstream digest: %v", e.LocalImageDigests(t, ref))
				}
			}
			// Upstream, counted: with a mirror serving, only the probe's
			// requests (ping, token, HEAD; twice when it answered 429).
			if tc.wantServed >= 0 {
				if n := len(e.Front.Requests()); n > 6 {
					t.Errorf("%d upstream requests, want at most the probe's", n)
				}
			}
			// Credentials only where they belong.
			for _, q := range e.Front.Requests() {
				if q.BasicPassword == mirrorSecret {
					t.Errorf("upstream received the mirror's password")
				}
			}
			for i, m := range mirrors {
				for _, q := range m.front.Requests() {
					if q.BasicPassword == canary || q.BasicUser == "upstream-user" {
						t.Errorf("mirror %d received the upstream credentials", i)
					}
					if q.BasicUser != "" && q.BasicUser != "mirror-user" {
						t.Errorf("mirror %d received credentials of %q", i, q.BasicUser)
					}
				}
			}
			assertNoSecretLeak(t, res, canary)
			assertNoSecretLeak(t, res, mirrorSecret)
		})
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// closedPort is a loopback host:port nothing listens on: a mirror down.
func closedPort(t *testing.T) string {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

// setRegistryMirrors gives the host's dockerd registry-mirrors, as
// daemon.json does on a runner: written to its config file, then SIGHUP
// (dockerd reloads registry-mirrors live), waiting until its Engine API
// reports them. A mirror's address is known only once the host runs
// (ExposeOnHost), so it cannot be a start flag.
func (h *RemoteHost) setRegistryMirrors(tb testing.TB, mirrors ...string) {
	tb.Helper()
	cfg, _ := json.Marshal(map[string]any{"registry-mirrors": mirrors})
	if err := os.WriteFile(filepath.Join(h.Dir, "daemon.json"), cfg, 0o600); err != nil {
		tb.Fatal(err)
	}
	h.mu.Lock()
	d := h.dockerd
	h.mu.Unlock()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		tb.Fatal(err)
	}
	err := waitUntil(20*time.Second, 100*time.Millisecond, func() (bool, error) {
		info, err := h.Docker().Info(context.Background(), client.InfoOptions{})
		if err != nil || info.Info.RegistryConfig == nil {
			return false, nil
		}
		return len(info.Info.RegistryConfig.Mirrors) == len(mirrors), nil
	})
	if err != nil {
		tb.Fatalf("dockerd on %s did not take registry-mirrors %v: %v\n%s", h.Name, mirrors, err, lastLinesOf(h.DockerdLog(), 10))
	}
}

// TestDaemonRegistryMirrors: the runner's daemon (here a dockerd in its
// own namespace, reached as docker-host, since the machine's shared
// dockerd cannot be reconfigured) has registry-mirrors in daemon.json. The
// image is on Docker Hub, which this machine cannot resolve: the action
// reads the mirror from the Engine API, the mirror (docker-registry behind
// its front) resolves the digest and serves it, and the daemon holds the
// Docker Hub tag pointed at that digest.
func TestDaemonRegistryMirrors(t *testing.T) {
	e := Start(t)
	h := StartRemoteHost(t, "mirrord", HostSpec{})
	m := e.startMirror(t)
	addr := h.ExposeOnHost(t, m.host)
	const repo = "library/mirrored"
	img, _ := random.Image(1024, 2)
	want, _ := img.Digest()
	e.pushTo(t, m.host, repo+":1", img)
	m.front.SetPublic(repo)
	h.setRegistryMirrors(t, "http://"+addr)
	m.front.ResetLog()

	res := e.RunAction(t, map[string]string{"image": "docker.io/" + repo + ":1", "auth": "anonymous",
		"docker-host": "unix://" + h.DockerSocket()})
	if res.ExitCode != 0 {
		t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
	}
	if !strings.Contains(res.Stdout, "the daemon's registry-mirrors for Docker Hub: "+addr) {
		t.Errorf("the log does not name the daemon's mirror:\n%s", res.Stdout)
	}
	var results []struct {
		ServedBy   string `json:"served_by"`
		ResolvedBy string `json:"resolved_by"`
		Digest     string `json:"digest"`
	}
	if err := json.Unmarshal([]byte(res.Outputs["results"]), &results); err != nil || len(results) != 1 {
		t.Fatalf("results %q: %v", res.Outputs["results"], err)
	}
	if r := results[0]; r.ServedBy != addr || r.ResolvedBy != addr || r.Digest != want.String() {
		t.Errorf("results %+v, want served and resolved by %s, digest %s", r, addr, want)
	}
	got, err := h.Docker().ImageInspect(context.Background(), "docker.io/"+repo+":1")
	if err != nil {
		t.Fatalf("the daemon lacks the Docker Hub tag: %v", err)
	}
	if !contains(got.RepoDigests, addr+"/"+repo+"@"+want.String()) {
		t.Errorf("RepoDigests %v, want the mirror's digest %s", got.RepoDigests, want)
	}
	if fromDaemon(m.front.Requests()) == 0 {
		t.Errorf("the mirror's front saw no request from the daemon")
	}
}
