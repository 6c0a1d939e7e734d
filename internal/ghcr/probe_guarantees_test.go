package ghcr

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// tokenRegistry answers the token endpoint with tokenBody and the manifest
// with manifestStatus (and retryAfter), checking the bearer token.
func tokenRegistry(t *testing.T, tokenBody string, manifestStatus int, retryAfter string) name.Reference {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			fmt.Fprint(w, tokenBody)
		case !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer "):
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="s"`)
			w.WriteHeader(http.StatusUnauthorized)
		case manifestStatus != http.StatusOK:
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(manifestStatus)
		default:
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("a", 64))
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Content-Length", "2")
		}
	}))
	t.Cleanup(srv.Close)
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/acme/app:1")
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Guarantee: every token the token endpoint hands back (token,
// access_token, refresh_token) reaches the mask, once each.
func TestProbeMasksRegistryTokens(t *testing.T) {
	ref := tokenRegistry(t, `{"token":"reg-token-1","access_token":"reg-token-1","refresh_token":"reg-refresh-2"}`, http.StatusOK, "")
	var masked []string
	res, err := Probe(context.Background(), ref, Credentials{Mode: AuthToken, Username: "u", Password: "p"},
		WithMask(func(s string) { masked = append(masked, s) }))
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest == "" || res.Requests != 3 {
		t.Errorf("result %+v", res)
	}
	if strings.Join(masked, ",") != "reg-token-1,reg-refresh-2" {
		t.Errorf("masked %q, want reg-token-1 and reg-refresh-2 once each", masked)
	}
}

// Guarantee (docs/decisions.md, "Anonymous tokens to daemons too"): an
// anonymous probe returns the pull token the registry issued it, masked,
// for the daemons; a credentialed probe returns its own.
func TestProbeReturnsTheAnonymousToken(t *testing.T) {
	for _, creds := range []Credentials{Anonymous, {Mode: AuthToken, Username: "u", Password: "p"}} {
		ref := tokenRegistry(t, `{"token":"pull-token-for-`+creds.String()+`"}`, http.StatusOK, "")
		var masked []string
		res, err := Probe(context.Background(), ref, creds, WithMask(func(s string) { masked = append(masked, s) }))
		if err != nil {
			t.Fatal(err)
		}
		want := "pull-token-for-" + creds.String()
		if res.Token != want || strings.Join(masked, ",") != want {
			t.Errorf("%v: token %q, masked %q; want %q both", creds, res.Token, masked, want)
		}
	}
}

// Guarantee: a 429's Retry-After travels in the Transient error, for
// internal/retry to wait that long.
func TestProbeCarriesRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   time.Duration
	}{
		{"1", time.Second},
		{"7", 7 * time.Second},
		{"", 0},
	} {
		ref := tokenRegistry(t, `{"token":"t"}`, http.StatusTooManyRequests, tc.header)
		_, err := Probe(context.Background(), ref, Credentials{Mode: AuthToken, Username: "u", Password: "p"})
		var tr *failure.Transient
		if !errors.As(err, &tr) {
			t.Fatalf("Retry-After %q: err = %v, want Transient", tc.header, err)
		}
		if tr.RetryAfter != tc.want || tr.RetryDelay() != tc.want {
			t.Errorf("Retry-After %q: RetryAfter = %v, want %v", tc.header, tr.RetryAfter, tc.want)
		}
	}
}
