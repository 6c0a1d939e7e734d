package pull

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/registrytest"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// fakeFleet answers PullAll from a table: which members refuse which
// credentials.
type fakeFleet struct {
	members       []string
	refuseCreds   map[string]bool // these members refuse the credentials
	refuseAll     map[string]error
	digest        string
	holds         map[string]string // members that report another digest than digest
	calls         [][]string
	anonymousRefs int
	sawPassword   []string
	refs          []string
	users         []string
	// failFrom: members whose pulls from refs starting with the key fail.
	failFrom map[string][]string
}

func (f *fakeFleet) Name() string    { return "cluster" }
func (f *fakeFleet) Runtime() string { return "kubernetes" }
func (f *fakeFleet) PullAll(_ context.Context, ref string, creds registryauth.Credentials, only []string, report func(member, digest string, took time.Duration, err error)) error {
	f.calls = append(f.calls, only)
	f.refs = append(f.refs, ref)
	if creds.IsAnonymous() {
		f.anonymousRefs++
		f.users = append(f.users, "")
	} else {
		f.sawPassword = append(f.sawPassword, creds.Password+"|"+creds.RegistryToken)
		f.users = append(f.users, creds.Username)
	}
	for _, m := range f.members {
		if len(only) > 0 && !slices.Contains(only, m) {
			continue
		}
		failing := false
		for prefix, ms := range f.failFrom {
			failing = failing || (strings.HasPrefix(ref, prefix) && slices.Contains(ms, m))
		}
		switch {
		case failing:
			report(m, "", 0, &failure.Transient{Response: failure.Response{Status: 502, Message: "bad gateway"}})
		case f.refuseAll[m] != nil:
			report(m, "", 0, f.refuseAll[m])
		case !creds.IsAnonymous() && f.refuseCreds[m]:
			report(m, "", 0, &failure.Rejected{Response: failure.Response{Status: 401, Message: "unauthorized"}})
		default:
			d, ok := f.holds[m]
			if !ok {
				d = f.digest
			}
			report(m, d, time.Millisecond, nil)
		}
	}
	return nil
}

func TestFleetFallsBackPerMember(t *testing.T) {
	ref, digest := registrytest.Open(t)
	images, err := ParseImages([]string{ref})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name         string
		fallback     bool
		refuseCreds  map[string]bool
		refuseAll    map[string]error
		wantOK       []string
		wantFallback []string
		wantClass    map[string]string
	}{
		{"all accept", true, nil, nil, []string{"a", "b"}, nil, nil},
		{"b refuses the credentials, anonymous works", true, map[string]bool{"b": true}, nil, []string{"a", "b"}, []string{"b"}, nil},
		{"no fallback allowed", false, map[string]bool{"b": true}, nil, []string{"a"}, nil, map[string]string{"b": "rejected"}},
		{"a node not ready is not retried", true, nil, map[string]error{"a": &failure.Transient{Err: errors.New("not ready")}}, []string{"b"}, nil, map[string]string{"a": "transient"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeFleet{members: []string{"a", "b"}, refuseCreds: tt.refuseCreds, refuseAll: tt.refuseAll, digest: digest}
			res := Run(context.Background(), images, nil, Options{
				Credentials: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "deployer", Password: "pw"},
				Fallback:    tt.fallback, Fleet: f,
				Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond},
			})
			if len(res) != 2 {
				t.Fatalf("results %+v", res)
			}
			for _, r := range res {
				ok := slices.Contains(tt.wantOK, r.Host)
				if ok != (r.Err == nil) || r.Runtime != "kubernetes" {
					t.Errorf("%s: err %v runtime %q", r.Host, r.Err, r.Runtime)
				}
				if ok && r.Digest != digest {
					t.Errorf("%s: digest %q, want %q", r.Host, r.Digest, digest)
				}
				if !ok && r.Digest != "" {
					t.Errorf("%s failed but carries digest %q", r.Host, r.Digest)
				}
				fb := slices.Contains(tt.wantFallback, r.Host)
				if fb != r.FallbackUsed || (fb && (r.AuthMode != registryauth.ModeAnonymous || r.CredentialError == "")) {
					t.Errorf("%s: fallback %v mode %q credential-error %q", r.Host, r.FallbackUsed, r.AuthMode, r.CredentialError)
				}
				if c := tt.wantClass[r.Host]; c != "" && failure.ClassOf(r.Err) != c {
					t.Errorf("%s: class %q, want %q", r.Host, failure.ClassOf(r.Err), c)
				}
			}
			if want := len(tt.wantFallback); f.anonymousRefs != min(want, 1) {
				t.Errorf("%d anonymous calls, want %d", f.anonymousRefs, min(want, 1))
			}
			for _, s := range f.sawPassword {
				if s != "pw|" {
					t.Errorf("the fleet got %q: the password and no registry token (kubelets take only username and password)", s)
				}
			}
		})
	}
}

// Guarantee: a member that reports another digest than the probe resolved,
// or none, fails with a DriftError (error_class drift): one digest is never
// reported for a split fleet. The member that holds the right one passes.
func TestFleetMemberDriftFails(t *testing.T) {
	ref, digest := registrytest.Open(t)
	images, err := ParseImages([]string{ref})
	if err != nil {
		t.Fatal(err)
	}
	other := "sha256:" + strings.Repeat("d", 64)
	for _, holds := range []string{other, ""} {
		f := &fakeFleet{members: []string{"a", "b"}, digest: digest, holds: map[string]string{"b": holds}}
		res := Run(context.Background(), images, nil, Options{Credentials: registryauth.Anonymous, Fleet: f,
			Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond}})
		if len(res) != 2 {
			t.Fatalf("results %+v", res)
		}
		if a := res[0]; a.Host != "a" || a.Err != nil || a.Digest != digest || a.ImageRef == "" {
			t.Errorf("member a holds the probed digest: %+v", a)
		}
		b := res[1]
		var drift *DriftError
		if b.Host != "b" || !errors.As(b.Err, &drift) || failure.ClassOf(b.Err) != "drift" {
			t.Fatalf("member b holds %q: err %v, want a DriftError", holds, b.Err)
		}
		if drift.Expected != digest || drift.Got != holds || b.Digest != "" || b.ImageRef != "" || b.Pulled {
			t.Errorf("member b holds %q: drift %+v, result digest %q ref %q pulled %v", holds, drift, b.Digest, b.ImageRef, b.Pulled)
		}
	}
}

// Guarantee: a fleet gets the username and password (kubelets take no
// bearer token), never the scoped token the probe bought: that token would
// sit in a pull Secret in the cluster for nothing.
func TestFleetGetsNoRegistryToken(t *testing.T) {
	reg := startScripted(t)
	images, err := ParseImages([]string{reg.ref()})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFleet{members: []string{"a"}, digest: testDigest}
	res := Run(context.Background(), images, nil, Options{Credentials: testToken, Fleet: f,
		Retry: retry.Policy{Base: time.Millisecond, Max: time.Millisecond}})
	if len(res) != 1 || res[0].Err != nil {
		t.Fatalf("results %+v", res)
	}
	if strings.Join(f.sawPassword, ",") != "pw|" {
		t.Errorf("the fleet got password|token %q, want the password and no token", f.sawPassword)
	}
}

// A cluster a mirror serves pre-pulls <mirror>/<repo>@<digest> on every
// node with the mirror's credentials (the pull Secret names the mirror's
// host and holds nothing of upstream's); a node the mirror fails is pulled
// from upstream with upstream's credentials, and its result says so; the
// quota guard counts nothing for the mirror's pulls.
func TestFleetPulledFromMirror(t *testing.T) {
	const repo = "library/app"
	up, img, _, want := upstreamWithImage(t, repo)
	m := startSim(t)
	m.push(t, repo+":1", img)
	m.front.AddUser("mirroruser", "mirror-secret", false, repo)
	set := mirror.Set{}
	set.Add(up.host, mirror.Mirror{Host: m.host})
	images, _ := ParseImages([]string{up.host + "/" + repo + ":1"})
	f := &fakeFleet{members: []string{"a", "b"}, digest: want.String(), failFrom: map[string][]string{m.host + "/": {"b"}}}
	res := Run(context.Background(), images, nil, Options{
		Credentials:       registryauth.Credentials{Mode: registryauth.ModeToken, Username: "upuser", Password: "up-secret"},
		MirrorCredentials: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "mirroruser", Password: "mirror-secret"},
		Mirrors:           set, Fleet: f})
	if len(res) != 2 {
		t.Fatalf("results %+v", res)
	}
	byNode := map[string]Result{res[0].Host: res[0], res[1].Host: res[1]}
	a, b := byNode["a"], byNode["b"]
	if a.Err != nil || a.ServedBy != m.host || a.Digest != want.String() || a.ImageRef != up.host+"/"+repo+"@"+want.String() {
		t.Errorf("node a: %+v", a)
	}
	if b.Err != nil || b.ServedBy != "" || !strings.Contains(fmt.Sprint(b.MirrorNotes), "pulled from upstream") {
		t.Errorf("node b: %+v", b)
	}
	wantRefs := []string{m.host + "/" + repo + "@" + want.String(), up.host + "/" + repo + "@" + want.String()}
	if !slices.Equal(f.refs, wantRefs) || !slices.Equal(f.users, []string{"mirroruser", "upuser"}) || !slices.Equal(f.calls[1], []string{"b"}) {
		t.Errorf("pulls %q as %q (only %q), want the mirror's as mirroruser, then upstream's for b as upuser", f.refs, f.users, f.calls)
	}
	if strings.Join(f.sawPassword, ",") != "mirror-secret|,up-secret|" {
		t.Errorf("passwords|tokens %q", f.sawPassword)
	}

	// Quota: none left upstream, the mirror serves: the guard lets it run.
	host, digest := quotaRegistry(t, "0")
	qm := startSim(t)
	src, _ := remote.Image(mustName(t, host+"/"+repo+":1"))
	qm.push(t, repo+":1", src)
	qm.front.SetPublic(repo)
	qset := mirror.Set{}
	qset.Add(host, mirror.Mirror{Host: qm.host})
	images, _ = ParseImages([]string{host + "/" + repo + ":1"})
	qf := &fakeFleet{members: []string{"a"}, digest: digest}
	if r := Run(context.Background(), images, nil, Options{Credentials: registryauth.Anonymous, QuotaGuard: true, Mirrors: qset, Fleet: qf})[0]; r.Err != nil || r.ServedBy != qm.host {
		t.Errorf("quota guard with the mirror serving the cluster: %v, served by %q", r.Err, r.ServedBy)
	}
}

func mustName(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
