package ghcr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
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
	res, err := Probe(context.Background(), ref, registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"},
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

// Guarantee (docs/decisions.md, "registryauth.Anonymous tokens to daemons too"): an
// anonymous probe returns the pull token the registry issued it, masked,
// for the daemons; a credentialed probe returns its own.
func TestProbeReturnsTheAnonymousToken(t *testing.T) {
	for _, creds := range []registryauth.Credentials{registryauth.Anonymous, {Mode: registryauth.ModeToken, Username: "u", Password: "p"}} {
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
		_, err := Probe(context.Background(), ref, registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"})
		var tr *failure.Transient
		if !errors.As(err, &tr) {
			t.Fatalf("Retry-After %q: err = %v, want Transient", tc.header, err)
		}
		if tr.RetryAfter != tc.want || tr.RetryDelay() != tc.want {
			t.Errorf("Retry-After %q: RetryAfter = %v, want %v", tc.header, tr.RetryAfter, tc.want)
		}
	}
}

// Guarantee: loopback is decided by parsing the host, never by its first
// characters: a name that merely looks like loopback (127.example.net,
// localhost.example.net) is a remote host, reached only over TLS.
func TestIsLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "127.0.0.1": true, "127.3.2.1": true, "::1": true,
		"127.example.net": false, "localhost.example.net": false, "localhost-registry": false,
		"127.0.0.1.nip.io": false, "10.0.0.1": false, "": false, "::ffff:10.0.0.1": false,
	} {
		if got := IsLoopback(host); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", host, got, want)
		}
	}
}

// realmTransport is a loopback registry (127.0.0.1:5000, plain HTTP
// only) whose token challenge names realm; it records every request
// that reaches any other host.
type realmTransport struct {
	realm string
	mu    sync.Mutex
	other []string
}

func (rt *realmTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != "127.0.0.1:5000" {
		rt.mu.Lock()
		rt.other = append(rt.other, req.URL.String()+" Authorization="+req.Header.Get("Authorization"))
		rt.mu.Unlock()
		return nil, errors.New("reached " + req.URL.Host)
	}
	if req.URL.Scheme == "https" {
		return nil, &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}
	}
	h := http.Header{}
	h.Set("WWW-Authenticate", `Bearer realm="`+rt.realm+`",service="s"`)
	return &http.Response{StatusCode: http.StatusUnauthorized, Header: h, Body: http.NoBody, Request: req}, nil
}

// Guarantee: a host that merely looks like loopback gets no plain HTTP
// from the probe: a registry whose token realm is http://127.example.net or
// http://localhost.example.net is refused before the credentials go there
// in clear. A real loopback realm is reached, so the guard is what stops
// the lookalikes.
func TestProbeNoPlainHTTPToLoopbackLookalikes(t *testing.T) {
	ref, err := name.ParseReference("127.0.0.1:5000/acme/app:1")
	if err != nil {
		t.Fatal(err)
	}
	creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "canary-pw"}
	for _, realm := range []string{"http://127.example.net/token", "http://localhost.example.net/token", "http://127.0.0.1.nip.io/token"} {
		rt := &realmTransport{realm: realm}
		_, err := Probe(context.Background(), ref, creds, WithTransport(rt))
		var bad *failure.BadInput
		if !errors.As(err, &bad) || bad.Input != "InsecureRegistries" {
			t.Errorf("realm %s: err = %v, want the InsecureRegistries refusal", realm, err)
		}
		if len(rt.other) > 0 {
			t.Errorf("realm %s: plain HTTP sent: %v", realm, rt.other)
		}
	}
	rt := &realmTransport{realm: "http://localhost:5001/token"}
	_, _ = Probe(context.Background(), ref, creds, WithTransport(rt))
	if len(rt.other) == 0 {
		t.Error("a localhost realm was never asked; the test cannot tell the guard from a probe that stops early")
	}
}
