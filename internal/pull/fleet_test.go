package pull

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
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
}

func (f *fakeFleet) Name() string    { return "cluster" }
func (f *fakeFleet) Runtime() string { return "kubernetes" }
func (f *fakeFleet) PullAll(_ context.Context, ref string, creds *ghcr.Credentials, only []string) ([]Member, error) {
	f.calls = append(f.calls, only)
	if creds == nil {
		f.anonymousRefs++
	} else {
		f.sawPassword = append(f.sawPassword, creds.Password+"|"+creds.RegistryToken)
	}
	var out []Member
	for _, m := range f.members {
		if len(only) > 0 && !slices.Contains(only, m) {
			continue
		}
		switch {
		case f.refuseAll[m] != nil:
			out = append(out, Member{Name: m, Err: f.refuseAll[m]})
		case creds != nil && f.refuseCreds[m]:
			out = append(out, Member{Name: m, Err: &failure.Rejected{Response: failure.Response{Status: 401, Message: "unauthorized"}}})
		default:
			d, ok := f.holds[m]
			if !ok {
				d = f.digest
			}
			out = append(out, Member{Name: m, Digest: d, Duration: time.Millisecond})
		}
	}
	return out, nil
}

func TestFleetFallsBackPerMember(t *testing.T) {
	ref, digest := openRegistry(t)
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
				Credentials: ghcr.Credentials{Mode: ghcr.AuthToken, Username: "deployer", Password: "pw"},
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
				if fb != r.FallbackUsed || (fb && (r.AuthMode != ghcr.AuthAnonymous || r.CredentialError == "")) {
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
	ref, digest := openRegistry(t)
	images, err := ParseImages([]string{ref})
	if err != nil {
		t.Fatal(err)
	}
	other := "sha256:" + strings.Repeat("d", 64)
	for _, holds := range []string{other, ""} {
		f := &fakeFleet{members: []string{"a", "b"}, digest: digest, holds: map[string]string{"b": holds}}
		res := Run(context.Background(), images, nil, Options{Credentials: ghcr.Anonymous, Fleet: f,
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
