package ghcr

import (
	"context"
	"errors"
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
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

func TestParseQuota(t *testing.T) {
	tests := []struct {
		name                     string
		limit, remaining, source string
		want                     *Quota
	}{
		{"docker hub anonymous", "100;w=21600", "76;w=21600", "203.0.113.7",
			&Quota{Limit: 100, Remaining: 76, Window: 6 * time.Hour, Source: "203.0.113.7"}},
		{"spent", "100;w=21600", "0;w=21600", "", &Quota{Limit: 100, Remaining: 0, Window: 6 * time.Hour}},
		{"no window", "200", "3", "", &Quota{Limit: 200, Remaining: 3}},
		{"window only on remaining", "200", "3;w=60", "", &Quota{Limit: 200, Remaining: 3, Window: time.Minute}},
		{"absurd window ignored", "10;w=99999999999", "1", "", &Quota{Limit: 10, Remaining: 1}},
		{"none", "", "", "", nil},
		{"only limit", "100;w=21600", "", "", nil},
		{"not a number", "lots", "76", "", nil},
		{"negative", "100", "-1", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.limit != "" {
				h.Set("ratelimit-limit", tt.limit)
			}
			if tt.remaining != "" {
				h.Set("ratelimit-remaining", tt.remaining)
			}
			if tt.source != "" {
				h.Set("docker-ratelimit-source", tt.source)
			}
			got := ParseQuota(h)
			if (got == nil) != (tt.want == nil) || (got != nil && *got != *tt.want) {
				t.Errorf("ParseQuota = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// quotaRegistry serves a real in-process registry and adds Docker Hub's
// quota headers to manifest answers; spent makes it answer 429 instead.
func quotaRegistry(t *testing.T, remaining string, spent bool, retryAfter string) (name.Reference, *int) {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	gets, pushed := 0, false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("ratelimit-limit", "100;w=21600")
			w.Header().Set("ratelimit-remaining", remaining+";w=21600")
			w.Header().Set("docker-ratelimit-source", "203.0.113.7")
			if r.Method == http.MethodGet {
				gets++
			}
			if spent && pushed {
				if retryAfter != "" {
					w.Header().Set("Retry-After", retryAfter)
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusTooManyRequests)
				_, _ = w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your unauthenticated pull rate limit."}]}`))
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ref, _ := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/library/app:1")
	img, _ := random.Image(64, 1)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	gets, pushed = 0, true
	return ref, &gets
}

// The probe reads the quota from its manifest HEAD, which Docker Hub does
// not count: no GET of a manifest is made.
func TestProbeReadsQuota(t *testing.T) {
	ref, gets := quotaRegistry(t, "76", false, "")
	res, err := Probe(context.Background(), ref, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	want := Quota{Registry: ref.Context().RegistryStr(), Limit: 100, Remaining: 76, Window: 6 * time.Hour, Source: "203.0.113.7"}
	if res.Quota == nil || *res.Quota != want {
		t.Errorf("quota = %+v, want %+v", res.Quota, want)
	}
	if *gets != 0 {
		t.Errorf("%d manifest GETs: the probe spent quota", *gets)
	}
}

// A 429 with the quota headers is QuotaExceeded (class quota) naming the
// quota and when it comes back; with no Retry-After it is not retried.
func TestProbeOverQuota(t *testing.T) {
	tests := []struct {
		name       string
		retryAfter string
		wantInErr  []string
		wantRetry  bool
	}{
		{"no retry-after", "", []string{"quota of", "0 of 100 pulls left per 6h0m0s window", "203.0.113.7", "window slides", "{Mirrors}"}, false},
		{"retry-after", "7", []string{"retry in 7s"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref, _ := quotaRegistry(t, "0", true, tt.retryAfter)
			_, err := Probe(context.Background(), ref, registryauth.Anonymous)
			var qe *QuotaExceeded
			if !errors.As(err, &qe) {
				t.Fatalf("err = %T %v, want QuotaExceeded", err, err)
			}
			if failure.ClassOf(err) != "quota" {
				t.Errorf("class %q", failure.ClassOf(err))
			}
			for _, w := range tt.wantInErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			var r retry.Retryable
			if errors.As(err, &r) && r.Transient() != tt.wantRetry {
				t.Errorf("retryable = %v, want %v", r.Transient(), tt.wantRetry)
			}
		})
	}
}

// A 429 without quota headers stays an ordinary transient failure.
func TestOverQuotaNeedsHeaders(t *testing.T) {
	te := &failure.Transient{Response: failure.Response{Status: 429}}
	if got := OverQuota(te, nil); got != error(te) {
		t.Errorf("got %v", got)
	}
	five := &failure.Transient{Response: failure.Response{Status: 503}}
	if got := OverQuota(five, &Quota{Limit: 1}); got != error(five) {
		t.Errorf("a 503 became %v", got)
	}
}

// A quota failure is diagnosed as one: sign in, a mirror, the window; not
// "raise retries", which cannot help.
func TestDiagnoseQuota(t *testing.T) {
	err := &QuotaExceeded{Quota: Quota{Registry: "index.docker.io", Limit: 100, Window: 6 * time.Hour}, Err: &failure.Transient{Response: failure.Response{Status: 429}}}
	d := Diagnose("index.docker.io", []Attempt{{Mode: registryauth.ModeAnonymous, Err: err}})
	if !strings.Contains(d, "pull quota is spent") || strings.Contains(d, "raise `retries`") {
		t.Errorf("diagnosis:\n%s", d)
	}
}
