package ghcr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

type recordingTransport struct {
	mu   sync.Mutex
	urls []string
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.urls = append(r.urls, req.URL.String())
	r.mu.Unlock()
	return nil, errors.New("tls: handshake failure")
}

// A registry on a private address is never spoken to in plain HTTP unless
// the user listed it: go-containerregistry alone would try http://.
func TestProbeRefusesPlainHTTPOffLoopback(t *testing.T) {
	ref, _ := name.ParseReference("10.9.8.7:5000/acme/app:1")
	rt := &recordingTransport{}
	_, err := Probe(context.Background(), ref, registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"}, WithTransport(rt))
	if err == nil {
		t.Fatal("probe succeeded")
	}
	for _, u := range rt.urls {
		if u[:5] == "http:" {
			t.Errorf("plain HTTP request sent: %s", u)
		}
	}

	rt = &recordingTransport{}
	_, _ = Probe(context.Background(), ref, registryauth.Anonymous, WithTransport(rt), WithInsecureRegistries("10.9.8.7:5000"))
	sawHTTP := false
	for _, u := range rt.urls {
		sawHTTP = sawHTTP || u[:5] == "http:"
	}
	if !sawHTTP {
		t.Errorf("insecure-registry listed, yet no HTTP attempt: %v", rt.urls)
	}
}

// A registry that redirects to another host must not hand that host the
// credentials or the registry token (blob redirects to storage are normal;
// what is forwarded is what matters).
func TestProbeRedirectDoesNotForwardCredentials(t *testing.T) {
	var other []string
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		other = append(other, r.Header.Get("Authorization"))
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("a", 64))
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Content-Length", "2")
	}))
	defer elsewhere.Close()
	var registry *httptest.Server
	registry = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			_, _ = w.Write([]byte(`{"token":"registry-token-xyz"}`))
		case r.Header.Get("Authorization") != "Bearer registry-token-xyz":
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+registry.URL+`/token",service="s"`)
			w.WriteHeader(http.StatusUnauthorized)
		default:
			http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
		}
	}))
	defer registry.Close()
	ref, _ := name.ParseReference(strings.TrimPrefix(registry.URL, "http://") + "/acme/app:1")
	_, _ = Probe(context.Background(), ref, registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "canary-pw"})
	if len(other) == 0 {
		t.Fatal("the redirect was not followed; the test proves nothing")
	}
	for _, h := range other {
		if h != "" {
			t.Errorf("the other host received Authorization %q", h)
		}
	}
}

// schemeTransport fails every HTTPS request with a certificate error, as a
// registry with a self-signed certificate (or a man in the middle) would,
// and records every plain-HTTP request that gets past the probe's guard.
type schemeTransport struct {
	mu    sync.Mutex
	plain []string
}

func (s *schemeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "https" {
		return nil, &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}
	}
	s.mu.Lock()
	s.plain = append(s.plain, req.URL.String())
	s.mu.Unlock()
	return nil, errors.New("plain HTTP reached the network")
}

// A TLS failure is never answered by retrying over plain HTTP, which is
// what go-containerregistry does by itself for private-range addresses,
// unless the registry is listed in insecure-registry.
func TestProbeNeverDowngradesTLS(t *testing.T) {
	for _, tc := range []struct {
		registry  string
		insecure  []string
		wantPlain bool
	}{
		{registry: "10.20.30.40:5000"},
		{registry: "192.168.1.9"},
		{registry: "registry.example.com"},
		{registry: "10.20.30.40:5000", insecure: []string{"10.20.30.40:5000"}, wantPlain: true},
	} {
		label := tc.registry
		if len(tc.insecure) > 0 {
			label += " listed in insecure-registry"
		}
		t.Run(label, func(t *testing.T) {
			st := &schemeTransport{}
			ref, err := name.ParseReference(tc.registry + "/acme/app:1")
			if err != nil {
				t.Fatal(err)
			}
			_, err = Probe(context.Background(), ref, registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "pw"},
				WithTransport(st), WithInsecureRegistries(tc.insecure...))
			if err == nil {
				t.Fatal("the probe succeeded through a failing TLS transport")
			}
			if got := len(st.plain) > 0; got != tc.wantPlain {
				t.Errorf("plain HTTP requests %v, want any: %v (error: %v)", st.plain, tc.wantPlain, err)
			}
			if !tc.wantPlain && !strings.Contains(err.Error(), "certificate") && !strings.Contains(err.Error(), "{InsecureRegistries}") {
				t.Errorf("the error names neither the certificate nor {InsecureRegistries}: %v", err)
			}
		})
	}
}

// With a platform, the probe resolves it: an index without that platform
// fails as bad platform input (as a pull would with "no matching
// manifest"), one with it gives the platform's manifest digest.
func TestProbeResolvesPlatform(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	amd, _ := random.Image(64, 1)
	arm, _ := random.Image(64, 1)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}})
	ref, _ := name.ParseReference(host + "/acme/multi:1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	armDigest, _ := arm.Digest()
	for _, tt := range []struct {
		platform string
		want     string // digest, or "" for a platform error
	}{
		{"linux/arm64", armDigest.String()},
		{"linux/arm64/v8", armDigest.String()},
		{"linux/s390x", ""},
	} {
		p, _ := image.ParsePlatform(tt.platform)
		res, err := Probe(context.Background(), ref, registryauth.Anonymous, WithPlatform(&p))
		var bad *failure.BadInput
		switch {
		case tt.want == "" && (!errors.As(err, &bad) || bad.Input != "platform" || !strings.Contains(err.Error(), "linux/amd64")):
			t.Errorf("%s: err = %v, want a platform error listing what the index has", tt.platform, err)
		case tt.want != "" && (err != nil || res.PlatformDigest != tt.want):
			t.Errorf("%s: digest %q err %v, want %s", tt.platform, res.PlatformDigest, err, tt.want)
		}
	}
}
