package pull

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// quotaRegistry serves one image under tags 1 and 2 and reports Docker
// Hub's quota headers with remaining pulls left ("" sends none).
func quotaRegistry(t *testing.T, remaining string) (host, digest string) {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if remaining != "" && strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("ratelimit-limit", "100;w=21600")
			w.Header().Set("ratelimit-remaining", remaining+";w=21600")
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	host = strings.TrimPrefix(srv.URL, "http://")
	img, _ := random.Image(64, 1)
	for _, tag := range []string{"1", "2"} {
		ref, _ := name.ParseReference(host + "/library/app:" + tag)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := img.Digest()
	return host, d.String()
}

// The guard fails every image of the registry before any target pulls
// when fewer pulls are left than images × targets; it lets the step run
// when enough are, when it is off, when nothing is pulled, and when the
// registry reports no quota.
func TestQuotaGuard(t *testing.T) {
	tests := []struct {
		name      string
		remaining string
		guard     bool
		targets   int
		wantPulls int // daemon pulls in all
		wantClass string
	}{
		{"enough left", "6", true, 3, 6, ""},
		{"one short", "5", true, 3, 0, "quota"},
		{"spent", "0", true, 1, 0, "quota"},
		{"guard off", "5", false, 3, 6, ""},
		{"resolve only", "0", true, 0, 0, ""},
		{"no quota reported", "", true, 3, 6, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, digest := quotaRegistry(t, tt.remaining)
			images, err := ParseImages([]string{host + "/library/app:1", host + "/library/app:2"})
			if err != nil {
				t.Fatal(err)
			}
			var daemons []*fakeDaemon
			var targets []Target
			for i := range tt.targets {
				d := &fakeDaemon{digest: digest}
				daemons = append(daemons, d)
				targets = append(targets, Target{Name: string(rune('a' + i)), Open: func(context.Context) (Daemon, error) { return d, nil }})
			}
			results := Run(context.Background(), images, targets, Options{Credentials: registryauth.Anonymous, QuotaGuard: tt.guard})
			pulls := 0
			for _, d := range daemons {
				pulls += len(d.calls)
			}
			if pulls != tt.wantPulls {
				t.Errorf("%d daemon pulls, want %d", pulls, tt.wantPulls)
			}
			for _, r := range results {
				if got := failure.ClassOf(r.Err); got != tt.wantClass {
					t.Errorf("%s on %s: class %q (%v), want %q", r.Image, r.Host, got, r.Err, tt.wantClass)
				}
				if tt.wantClass == "quota" {
					for _, w := range []string{"needs 6", "2 images × 3 targets"} {
						if tt.targets == 3 && !strings.Contains(r.Err.Error(), w) {
							t.Errorf("error lacks %q: %v", w, r.Err)
						}
					}
					if r.Digest != "" || r.ImageRef != "" {
						t.Errorf("a refused image reports a digest: %+v", r)
					}
				}
				if tt.remaining != "" && (r.Quota == nil || r.Quota.Limit != 100) {
					t.Errorf("result lacks the quota read: %+v", r.Quota)
				}
			}
		})
	}
}

// A daemon's 429 in its words, on a registry that reports a quota, is
// the quota running out mid-step: named as such and not retried without
// a Retry-After (seconds of backoff cannot bring back a six-hour window).
func TestDaemonHitsQuota(t *testing.T) {
	host, digest := quotaRegistry(t, "50")
	images, _ := ParseImages([]string{host + "/library/app:1"})
	hit := failure.FromDaemon(500, "toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit", true)
	d := &fakeDaemon{digest: digest, answers: []error{hit, hit, hit}}
	res := Run(context.Background(), images, []Target{{Name: "local", Open: func(context.Context) (Daemon, error) { return d, nil }}},
		Options{Credentials: registryauth.Anonymous, Retry: retry.Policy{Retries: 2, Base: time.Millisecond}})
	if got := failure.ClassOf(res[0].Err); got != "quota" {
		t.Fatalf("class %q (%v), want quota", got, res[0].Err)
	}
	if len(d.calls) != 1 {
		t.Errorf("%d daemon pulls: retried into a spent quota", len(d.calls))
	}
	if !strings.Contains(res[0].Err.Error(), "50 of 100 pulls left") {
		t.Errorf("the error does not name the quota read: %v", res[0].Err)
	}
}

// A Docker target that already holds the probed digest costs no pull
// (dockerd asks the registry nothing for a pull by digest it holds), so
// the guard does not count it; one that lacks it is counted.
func TestQuotaGuardCountsOnlyTargetsThatLack(t *testing.T) {
	host, digest := quotaRegistry(t, "1")
	images, _ := ParseImages([]string{host + "/library/app:1", host + "/library/app:2"})
	holding := &tagDaemon{pullLog{refs: []string{host + "/library/app@" + digest}}}
	lacking := &tagDaemon{}
	for _, tt := range []struct {
		name      string
		daemons   []*tagDaemon
		wantClass string
	}{
		{"both held: needs 0", []*tagDaemon{holding}, ""},
		{"held on one, lacking on the other: needs 2 of 1", []*tagDaemon{holding, lacking}, "quota"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var targets []Target
			for i, d := range tt.daemons {
				targets = append(targets, Target{Name: string(rune('a' + i)), Open: func(context.Context) (Daemon, error) { return d, nil }})
			}
			res := Run(context.Background(), images, targets, Options{Credentials: registryauth.Anonymous, QuotaGuard: true})
			for _, r := range res {
				if got := failure.ClassOf(r.Err); got != tt.wantClass {
					t.Errorf("%s on %s: class %q (%v)", r.Image, r.Host, got, r.Err)
				}
				if tt.wantClass != "" && !strings.Contains(r.Err.Error(), "needs 2 (2 images × 2 targets, less 2 that hold it already or get it from a mirror)") {
					t.Errorf("error %v", r.Err)
				}
			}
		})
	}
}

// Docker and containerd targets that a mirror serves spend none of the registry's quota:
// with none left, the guard lets them pull from the mirror.
func TestQuotaGuardSparesMirroredTargets(t *testing.T) {
	host, digest := quotaRegistry(t, "0")
	src, _ := name.ParseReference(host + "/library/app:1")
	img, err := remote.Image(src)
	if err != nil {
		t.Fatal(err)
	}
	m := startSim(t)
	m.push(t, "library/app:1", img)
	m.front.SetPublic("library/app")
	set := mirror.Set{}
	set.Add(host, mirror.Mirror{Host: m.host})
	images, _ := ParseImages([]string{host + "/library/app:1"})
	// A Docker target and a containerd one (it renames the mirror's pull).
	for _, d := range []Daemon{&tagDaemon{}, &renameDaemon{digest: digest}} {
		res := Run(context.Background(), images, []Target{{Name: "local", Open: func(context.Context) (Daemon, error) { return d, nil }}},
			Options{Credentials: registryauth.Anonymous, QuotaGuard: true, Mirrors: set})
		if r := res[0]; r.Err != nil || r.ServedBy != m.host || r.Digest != digest {
			t.Errorf("%T: err %v, served by %q, digest %s", d, r.Err, r.ServedBy, r.Digest)
		}
	}
}
