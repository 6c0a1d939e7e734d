package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/registrytest"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// fakeDaemon answers pulls from a script, one entry per call.
type fakeDaemon struct {
	mu      sync.Mutex
	answers []error
	calls   []registryauth.Credentials
	digest  string
}

func (f *fakeDaemon) Pull(_ context.Context, ref string, _ *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, creds)
	if len(f.answers) > 0 {
		err := f.answers[0]
		f.answers = f.answers[1:]
		if err != nil {
			return false, err
		}
	}
	progress(10, 20)
	return true, nil
}

func (f *fakeDaemon) Inspect(_ context.Context, ref string) (image.Info, error) {
	repo := ref[:strings.LastIndex(ref, ":")]
	return image.Info{RepoDigests: image.ParseRepoDigests([]string{"other.io/x@sha256:" + strings.Repeat("0", 64), repo + "@" + f.digest}), Platform: image.PlatformOf("linux", "amd64", "")}, nil
}

func TestRunDaemonSideFallback(t *testing.T) {
	ref, digest := registrytest.Open(t)
	images, err := ParseImages([]string{ref})
	if err != nil {
		t.Fatal(err)
	}
	token := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"}
	rejected := failure.FromDaemon(500, "unauthorized: authentication required", false)
	notFound := failure.FromDaemon(404, "manifest unknown", false)
	transient := failure.FromDaemon(500, "503 Service Unavailable", false)
	tooMany := failure.FromDaemon(500, "toomanyrequests: You have reached your pull rate limit", false)

	tests := []struct {
		name         string
		answers      []error
		fallback     bool
		wantErr      bool
		wantMode     registryauth.Mode
		wantFallback bool
		wantCalls    []registryauth.Mode
	}{
		{"accepted", nil, true, false, registryauth.ModeToken, false, []registryauth.Mode{registryauth.ModeToken}},
		{"daemon rejects, fallback", []error{rejected}, true, false, registryauth.ModeAnonymous, true, []registryauth.Mode{registryauth.ModeToken, registryauth.ModeAnonymous}},
		{"daemon rejects, fallback off", []error{rejected}, false, true, "", false, []registryauth.Mode{registryauth.ModeToken}},
		{"not found never falls back", []error{notFound}, true, true, "", false, []registryauth.Mode{registryauth.ModeToken}},
		{"transient retried with the same credentials", []error{transient, transient}, true, false, registryauth.ModeToken, false, []registryauth.Mode{registryauth.ModeToken, registryauth.ModeToken, registryauth.ModeToken}},
		// README: "never on 404/429/5xx": a fault that outlasts the
		// retries fails with the credentials, it never turns anonymous.
		{"transient outlasting the retries never falls back", []error{transient, transient, transient, transient}, true, true, "", false,
			[]registryauth.Mode{registryauth.ModeToken, registryauth.ModeToken, registryauth.ModeToken, registryauth.ModeToken}},
		{"too many requests never falls back", []error{tooMany, tooMany, tooMany, tooMany}, true, true, "", false,
			[]registryauth.Mode{registryauth.ModeToken, registryauth.ModeToken, registryauth.ModeToken, registryauth.ModeToken}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDaemon{answers: tt.answers, digest: digest}
			targets := []Target{{Name: "local", Open: func(context.Context) (Daemon, error) { return fd, nil }}}
			res := Run(context.Background(), images, targets, Options{
				Credentials: token, Fallback: tt.fallback,
				Retry: retry.Policy{Retries: 3, Base: time.Millisecond, Max: time.Millisecond},
			})
			if len(res) != 1 {
				t.Fatalf("%d results", len(res))
			}
			r := res[0]
			if (r.Err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", r.Err, tt.wantErr)
			}
			if r.AuthMode != tt.wantMode || r.FallbackUsed != tt.wantFallback {
				t.Errorf("mode=%q fallback=%v, want %q %v", r.AuthMode, r.FallbackUsed, tt.wantMode, tt.wantFallback)
			}
			var modes []registryauth.Mode
			for _, c := range fd.calls {
				modes = append(modes, c.Mode)
			}
			if strings.Join(toStrings(modes), ",") != strings.Join(toStrings(tt.wantCalls), ",") {
				t.Errorf("daemon calls = %v, want %v", modes, tt.wantCalls)
			}
			if !tt.wantErr {
				if r.Digest != digest || r.ImageRef != strings.TrimSuffix(ref, ":1")+"@"+digest || !r.Pulled {
					t.Errorf("digest=%s ref=%s pulled=%v", r.Digest, r.ImageRef, r.Pulled)
				}
			} else if r.Diagnosis == "" || r.ImageRef != "" {
				t.Errorf("failure without diagnosis or with an image-ref: %+v", r)
			}
			if tt.wantFallback && !strings.Contains(r.CredentialError, "unauthorized") {
				t.Errorf("credential error %q lacks the daemon's words", r.CredentialError)
			}
			if !tt.wantFallback && r.CredentialError != "" {
				t.Errorf("credential error %q without a fallback", r.CredentialError)
			}
		})
	}
}

func toStrings(m []registryauth.Mode) []string {
	s := make([]string, len(m))
	for i, x := range m {
		s[i] = string(x)
	}
	return s
}

func TestRunProbeOnlyAndUnreachableTarget(t *testing.T) {
	ref, digest := registrytest.Open(t)
	images, _ := ParseImages([]string{ref, strings.Replace(ref, ":1", ":missing", 1)})
	res := Run(context.Background(), images, nil, Options{Credentials: registryauth.Anonymous})
	if len(res) != 2 || res[0].Err != nil || res[0].Digest != digest || res[0].Host != HostNone {
		t.Fatalf("probe-only result: %+v", res[0])
	}
	var nf *failure.NotFound
	if !errors.As(res[1].Err, &nf) {
		t.Errorf("missing tag: %v, want NotFoundError", res[1].Err)
	}

	down := []Target{
		{Name: "down", Open: func(context.Context) (Daemon, error) { return nil, errors.New("connection refused") }},
		{Name: "up", Open: func(context.Context) (Daemon, error) { return &fakeDaemon{digest: digest}, nil }},
	}
	res = Run(context.Background(), images[:1], down, Options{Credentials: registryauth.Anonymous})
	if res[0].Err == nil || !strings.Contains(res[0].Diagnosis, "down") || res[1].Err != nil {
		t.Errorf("one target down must not stop the other: %+v / %+v", res[0], res[1])
	}
}

func TestPinned(t *testing.T) {
	a, b := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	if got := image.Pinned("ghcr.io/acme/app:1.2.3", a); got != "ghcr.io/acme/app@"+a {
		t.Errorf("Pinned = %s", got)
	}
	if got := image.Pinned("ghcr.io/acme/app@"+b, a); got != "ghcr.io/acme/app@"+a {
		t.Errorf("Pinned of a digest ref = %s", got)
	}
}

// taggingDaemon is a Docker-like daemon: it records what it was asked to
// pull and tag, and holds whatever digest it was last asked for.
type taggingDaemon struct {
	fakeDaemon
	pulled []string
	tags   [][2]string
}

func (d *taggingDaemon) Pull(ctx context.Context, ref string, p *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	d.mu.Lock()
	d.pulled = append(d.pulled, ref)
	d.mu.Unlock()
	return d.fakeDaemon.Pull(ctx, ref, p, creds, progress)
}

func (d *taggingDaemon) Tag(_ context.Context, source, target string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tags = append(d.tags, [2]string{source, target})
	return nil
}

// Every target gets exactly the probed digest: a daemon that can tag pulls
// repo@digest and has the user's tag pointed at it; one that cannot (CRI)
// is pulled by tag, and holding another digest fails that target, naming
// both digests, with no digest in its result.
func TestRunPinsTheProbedDigest(t *testing.T) {
	ref, digest := registrytest.Open(t)
	images, err := ParseImages([]string{ref})
	if err != nil {
		t.Fatal(err)
	}
	moved := "sha256:" + strings.Repeat("9", 64)
	tagging := &taggingDaemon{fakeDaemon: fakeDaemon{digest: digest}}
	drifted := &fakeDaemon{digest: moved}
	amd64 := &fakeDaemon{digest: digest}
	targets := []Target{
		{Name: "docker", Open: func(context.Context) (Daemon, error) { return tagging, nil }},
		{Name: "cri", Open: func(context.Context) (Daemon, error) { return drifted, nil }},
	}
	res := Run(context.Background(), images, targets, Options{Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond}})
	pinned := strings.TrimSuffix(ref, ":1") + "@" + digest
	if r := res[0]; r.Err != nil || r.Digest != digest {
		t.Fatalf("docker target: %+v", r)
	}
	if len(tagging.pulled) != 1 || tagging.pulled[0] != pinned {
		t.Errorf("docker target pulled %v, want only %s", tagging.pulled, pinned)
	}
	if len(tagging.tags) != 1 || tagging.tags[0] != [2]string{pinned, ref} {
		t.Errorf("tags %v, want %s -> %s", tagging.tags, pinned, ref)
	}
	r := res[1]
	var drift *DriftError
	if !errors.As(r.Err, &drift) || drift.Expected != digest || drift.Got != moved ||
		!strings.Contains(r.Diagnosis, digest) || !strings.Contains(r.Diagnosis, moved) {
		t.Fatalf("drifted target: err=%v diagnosis=%q", r.Err, r.Diagnosis)
	}
	if c := failure.ClassOf(r.Err); c != "drift" {
		t.Errorf("drift classed %q", c)
	}
	if r.Digest != "" || r.ImageRef != "" || r.AuthMode != "" {
		t.Errorf("a failed result carries what it did not deliver: %+v", r)
	}

	// The platform is part of "exactly": a daemon that pulled another
	// platform than the one asked for fails.
	arm, _ := image.ParsePlatform("linux/arm64")
	res = Run(context.Background(), images, []Target{{Name: "local", Open: func(context.Context) (Daemon, error) { return amd64, nil }}},
		Options{Platform: &arm, Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond}})
	var bad *failure.BadInput
	if !errors.As(res[0].Err, &bad) || bad.Input != "platform" || res[0].Digest != "" {
		t.Errorf("linux/arm64 asked, linux/amd64 pulled: %+v", res[0])
	}
}

// The probe and the opening of targets run at the same time (an SSH
// handshake no longer waits for the registry), yet a target whose Open
// failed (a host key that did not verify) is never asked to pull: nothing,
// no credential, reaches it.
func TestRunProbesWhileTargetsOpen(t *testing.T) {
	seen := make(chan struct{})
	var once sync.Once
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(seen) })
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/acme/app:1"
	img, _ := random.Image(64, 1)
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	seen = make(chan struct{}) // from here on, only the probe asks
	once = sync.Once{}
	images, _ := ParseImages([]string{ref})
	d, _ := img.Digest()

	reached := &fakeDaemon{digest: d.String()}
	refused := &fakeDaemon{digest: d.String()}
	targets := []Target{
		{Name: "slow-handshake", Open: func(ctx context.Context) (Daemon, error) {
			// Serial code would probe only after this returns: it would
			// wait here until the timeout.
			select {
			case <-seen:
				return reached, nil
			case <-time.After(5 * time.Second):
				return nil, errors.New("the probe did not run while the host was being reached")
			}
		}},
		{Name: "bad-host-key", Open: func(context.Context) (Daemon, error) {
			return refused, errors.New("host key verification failed")
		}},
	}
	res := Run(context.Background(), images, targets, Options{
		Credentials: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"},
		Retry:       retry.Policy{Base: time.Millisecond, Max: time.Millisecond},
	})
	if res[0].Err != nil {
		t.Fatalf("slow target: %v", res[0].Err)
	}
	if res[1].Err == nil || !strings.Contains(res[1].Diagnosis, "host key verification failed") {
		t.Errorf("unverified target: %+v", res[1])
	}
	if len(refused.calls) != 0 {
		t.Errorf("a target whose key did not verify was asked to pull %d times", len(refused.calls))
	}
	if len(reached.calls) != 1 {
		t.Errorf("reached target pulled %d times", len(reached.calls))
	}
}

// Daemons get the probe's pull-scoped token; one rejected (expired) is
// replaced by a fresh token, not by the password and not by anonymous.
func TestRunGivesDaemonsAFreshScopedToken(t *testing.T) {
	front, err := ghcrsim.New(ghcrsim.Options{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(front)
	defer srv.Close()
	front.AddUser("deployer", "long-lived-secret", true, "*")
	ref := strings.TrimPrefix(srv.URL, "http://") + "/acme/private:1"
	img, _ := random.Image(64, 1)
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "deployer", Password: "long-lived-secret"})); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	images, _ := ParseImages([]string{ref})
	expired := failure.FromDaemon(500, "unauthorized: authentication required", false)
	fd := &fakeDaemon{answers: []error{expired}, digest: d.String()}
	res := Run(context.Background(), images, []Target{{Name: "h", Open: func(context.Context) (Daemon, error) { return fd, nil }}}, Options{
		Credentials: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "deployer", Password: "long-lived-secret"}, Fallback: true,
		Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond},
	})
	if res[0].Err != nil || res[0].AuthMode != registryauth.ModeToken || res[0].FallbackUsed {
		t.Fatalf("result %+v", res[0])
	}
	if len(fd.calls) != 2 {
		t.Fatalf("%d pulls, want the rejected one and one with a fresh token", len(fd.calls))
	}
	first, second := fd.calls[0].RegistryToken, fd.calls[1].RegistryToken
	if first == "" || second == "" || first == second {
		t.Errorf("tokens given to the daemon: %.12q then %.12q, want two different ones", first, second)
	}
}

// onPullDaemon is a fakeDaemon that runs before each pull (call counts
// from 1), to change the world between the probe and the daemon.
type onPullDaemon struct {
	*fakeDaemon
	before func(call int)
}

func (d onPullDaemon) Pull(ctx context.Context, ref string, p *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	d.mu.Lock()
	call := len(d.calls) + 1
	d.mu.Unlock()
	d.before(call)
	return d.fakeDaemon.Pull(ctx, ref, p, creds, progress)
}

// Guarantee (README: "never by the password"): when the daemon refuses the
// probe's scoped token and no fresh one can be had (the token endpoint is
// down, or now refuses the credentials), the daemon is never handed the
// username and password instead: it falls back to anonymous when allowed,
// else the pull fails.
func TestDaemonNeverGetsThePasswordWithoutAFreshToken(t *testing.T) {
	expired := failure.FromDaemon(500, "unauthorized: authentication required", false)
	for _, tc := range []struct {
		name        string
		tokenStatus int // the token endpoint's answer once the daemon refused
		fallback    bool
		wantModes   []registryauth.Mode
	}{
		{"token endpoint down, fallback", http.StatusServiceUnavailable, true, []registryauth.Mode{registryauth.ModeToken, registryauth.ModeAnonymous}},
		{"token endpoint down, no fallback", http.StatusServiceUnavailable, false, []registryauth.Mode{registryauth.ModeToken}},
		{"credentials revoked, fallback", http.StatusForbidden, true, []registryauth.Mode{registryauth.ModeToken, registryauth.ModeAnonymous}},
		{"credentials revoked, no fallback", http.StatusForbidden, false, []registryauth.Mode{registryauth.ModeToken}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := startScripted(t)
			images, err := ParseImages([]string{reg.ref()})
			if err != nil {
				t.Fatal(err)
			}
			fd := onPullDaemon{fakeDaemon: &fakeDaemon{answers: []error{expired}, digest: testDigest}, before: func(call int) {
				if call == 1 {
					reg.mu.Lock()
					reg.tokenStatus = tc.tokenStatus
					reg.mu.Unlock()
				}
			}}
			res := Run(context.Background(), images, []Target{{Name: "h", Open: func(context.Context) (Daemon, error) { return fd, nil }}}, Options{
				Credentials: testToken, Fallback: tc.fallback,
				Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond},
			})
			var modes []registryauth.Mode
			for i, c := range fd.calls {
				modes = append(modes, c.Mode)
				if !c.IsAnonymous() && c.RegistryToken == "" {
					t.Errorf("pull %d was handed the username and password (%s), not a scoped token", i+1, c)
				}
				if c.IsAnonymous() && (c.Password != "" || c.RegistryToken == "user-token") {
					t.Errorf("anonymous pull %d carries the user's secret or token: %s", i+1, c)
				}
			}
			if strings.Join(toStrings(modes), ",") != strings.Join(toStrings(tc.wantModes), ",") {
				t.Errorf("daemon calls %v, want %v", modes, tc.wantModes)
			}
			r := res[0]
			if tc.fallback != (r.Err == nil) || r.FallbackUsed != tc.fallback {
				t.Errorf("result: err %v, fallback %v", r.Err, r.FallbackUsed)
			}
			if r.Err != nil && failure.ClassOf(r.Err) != "rejected" {
				t.Errorf("class %q, want rejected: %v", failure.ClassOf(r.Err), r.Err)
			}
		})
	}
}

// Probed hears each probed image's pinned reference and the credentials
// targets will pull it with, once, before any target pulls and while the
// targets are still being reached (the relay starts its upstream fetch
// there); never for an image whose probe failed.
func TestRunTellsProbedBeforeTargetsPull(t *testing.T) {
	ref, digest := registrytest.Open(t)
	missing := strings.TrimSuffix(ref, ":1") + ":absent"
	images, err := ParseImages([]string{ref, missing})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var heard []string
	told := make(chan struct{})
	tagging := &taggingDaemon{fakeDaemon: fakeDaemon{digest: digest}}
	targets := []Target{{Name: "host", Open: func(ctx context.Context) (Daemon, error) {
		// Called only once the target is reached would wait here for
		// the timeout.
		select {
		case <-told:
			return tagging, nil
		case <-time.After(5 * time.Second):
			return nil, errors.New("Probed was not called while the target was being reached")
		}
	}}}
	creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"}
	res := Run(context.Background(), images, targets, Options{
		Credentials: creds, Fallback: true,
		Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond},
		Probed: func(_ context.Context, ref name.Digest, c registryauth.Credentials) {
			tagging.mu.Lock()
			pulled := len(tagging.pulled)
			tagging.mu.Unlock()
			mu.Lock()
			heard = append(heard, fmt.Sprintf("%s %s pulled-before=%d", ref, c.Mode, pulled))
			mu.Unlock()
			close(told)
		},
	})
	if res[0].Err != nil {
		t.Fatalf("%+v", res[0])
	}
	want := []string{fmt.Sprintf("%s@%s %s pulled-before=0", strings.TrimSuffix(ref, ":1"), digest, res[0].AuthMode)}
	if !slices.Equal(heard, want) {
		t.Errorf("Probed heard %q, want %q", heard, want)
	}
	if res[1].Err == nil {
		t.Errorf("the absent tag pulled: %+v", res[1])
	}
}

// pinnedSource names what targets that pull by digest pull: the serving
// mirror's reference with the mirror's credentials, else the registry's
// pinned reference with the probe's.
func TestPinnedSource(t *testing.T) {
	images, err := ParseImages([]string{"ghcr.io/acme/app:1"})
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("a", 64)
	probeCreds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"}
	mirrored, _ := name.NewDigest("mirror.example/acme/app@" + digest)
	for _, tc := range []struct {
		name      string
		p         probeOutcome
		ref, mode string
		ok        bool
	}{
		{"registry", probeOutcome{digest: digest, creds: probeCreds}, "ghcr.io/acme/app@" + digest, string(registryauth.ModeToken), true},
		{"mirror", probeOutcome{digest: digest, creds: probeCreds, source: &source{ref: mirrored, creds: registryauth.Anonymous}}, mirrored.String(), string(registryauth.Anonymous.Mode), true},
		{"no digest", probeOutcome{creds: probeCreds}, "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref, creds, ok := tc.p.pinnedSource(images[0])
			if ok != tc.ok || (ok && (ref.String() != tc.ref || string(creds.Mode) != tc.mode)) {
				t.Errorf("pinnedSource = %s %q %v, want %s %q %v", ref, creds.Mode, ok, tc.ref, tc.mode, tc.ok)
			}
		})
	}
}
