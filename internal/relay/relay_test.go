package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// upstream is an in-process registry holding one random image; blobGets
// counts GETs of blobs by digest.
type upstream struct {
	host     string
	img      v1.Image
	digest   name.Digest
	mu       sync.Mutex
	blobGets map[string]int
	pings    int // GET /v2/: ggcr's handshake, before a token exchange
	// blobHeads counts HEADs of blobs by digest; conns the connections
	// the registry accepted.
	blobHeads map[string]int
	conns     int
	// answer, by blob digest, replaces the registry's answer to a GET;
	// inner is the registry's.
	answer map[string]http.HandlerFunc
	inner  http.HandlerFunc
}

func newUpstream(t *testing.T, layers int64) *upstream {
	t.Helper()
	return newUpstreamOf(t, 4096, layers)
}

// newUpstreamOf is newUpstream with layers of about size bytes each.
func newUpstreamOf(t *testing.T, size, layers int64) *upstream {
	t.Helper()
	u := &upstream{blobGets: map[string]int{}, blobHeads: map[string]int{}, answer: map[string]http.HandlerFunc{}}
	reg := registry.New()
	u.inner = reg.ServeHTTP
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/blobs/") {
			u.mu.Lock()
			u.blobHeads[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]++
			u.mu.Unlock()
		}
		if r.URL.Path == "/v2/" {
			u.mu.Lock()
			u.pings++
			u.mu.Unlock()
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			u.mu.Lock()
			u.blobGets[d]++
			answer := u.answer[d]
			u.mu.Unlock()
			if answer != nil {
				answer(w, r)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			u.mu.Lock()
			u.conns++
			u.mu.Unlock()
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	u.host = strings.TrimPrefix(srv.URL, "http://")
	img, err := random.Image(size, layers)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(u.host + "/acme/app:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	u.img, u.digest = img, ref.Context().Digest(d.String())
	u.mu.Lock()
	u.pings, u.blobHeads, u.conns = 0, map[string]int{}, 0 // the push's
	u.mu.Unlock()
	return u
}

func newServer(t *testing.T, max int64) *Server {
	t.Helper()
	s, err := New(Options{Dir: t.TempDir(), MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// pullThrough pulls path@digest from the relay as host, as a runtime would.
func pullThrough(t *testing.T, s *Server, host, path string, d name.Digest) error {
	t.Helper()
	srv := httptest.NewServer(s.Handler(host))
	defer srv.Close()
	ref, _ := name.NewDigest(strings.TrimPrefix(srv.URL, "http://") + "/" + path + "@" + d.DigestStr())
	img, err := remote.Image(ref)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	_, err = img.RawConfigFile()
	return err
}

func TestRelayServesWhatWasAllowedOncePerBlob(t *testing.T) {
	u := newUpstream(t, 3)
	s := newServer(t, 0)
	path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	if path != "acme/app" {
		t.Errorf("path = %q", path)
	}
	var g sync.WaitGroup
	var failed atomic.Int32
	for _, h := range []string{"a", "b", "c"} {
		g.Go(func() {
			if err := pullThrough(t, s, h, path, u.digest); err != nil {
				t.Errorf("host %s: %v", h, err)
				failed.Add(1)
			}
		})
	}
	g.Wait()
	if failed.Load() > 0 {
		return
	}
	size, _ := u.img.Size()
	layers, _ := u.img.Layers()
	var want int64 = size
	cfgSize := int64(0)
	if m, err := u.img.Manifest(); err == nil {
		cfgSize = m.Config.Size
	}
	want += cfgSize
	for _, l := range layers {
		n, _ := l.Size()
		want += n
	}
	for _, h := range []string{"a", "b", "c"} {
		if got := s.Served(h, path); got != want {
			t.Errorf("served %s %d bytes, want %d (manifest, config, layers)", h, got, want)
		}
	}
	st := s.Stats()
	if len(st.BlobFetches) != 4 {
		t.Errorf("upstream fetched %d blobs, want 4: %v", len(st.BlobFetches), st.BlobFetches)
	}
	for d, n := range st.BlobFetches {
		if n != 1 || u.blobGets[d] != 1 {
			t.Errorf("blob %s fetched %d times (upstream saw %d), want once", d, n, u.blobGets[d])
		}
	}
	if st.Bytes != want-size {
		t.Errorf("upstream bytes %d, want %d", st.Bytes, want-size)
	}
	// One handshake (ping, and token where the registry asks for one) for
	// the repository, not one before each manifest and blob.
	if u.pings != 1 {
		t.Errorf("upstream pinged %d times for one repository, want 1", u.pings)
	}
	cfg, _ := u.img.ConfigName()
	for _, h := range []string{"a", "b", "c"} {
		if id, ok := s.NewImage(h, path, u.digest.DigestStr()); !ok || id != cfg.String() {
			t.Errorf("NewImage(%s) = %q, %v; want %s", h, id, ok, cfg)
		}
	}
}

func TestRelayRefuses(t *testing.T) {
	u := newUpstream(t, 1)
	s := newServer(t, 0)
	if _, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous); err != nil {
		t.Fatal(err)
	}
	layers, _ := u.img.Layers()
	layer, _ := layers[0].Digest()
	srv := httptest.NewServer(s.Handler("h"))
	defer srv.Close()
	other := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name, method, path string
		want               int
	}{
		{"the relayed manifest", "GET", "/v2/acme/app/manifests/" + u.digest.DigestStr(), 200},
		{"a relayed blob", "GET", "/v2/acme/app/blobs/" + layer.String(), 200},
		{"ping", "GET", "/v2/", 200},
		{"a tag", "GET", "/v2/acme/app/manifests/1", 404},
		{"another digest", "GET", "/v2/acme/app/manifests/" + other, 404},
		{"another blob", "GET", "/v2/acme/app/blobs/" + other, 404},
		{"another repository", "GET", "/v2/acme/other/manifests/" + u.digest.DigestStr(), 404},
		{"a relayed blob under another repository", "GET", "/v2/acme/other/blobs/" + layer.String(), 404},
		{"the catalog", "GET", "/v2/_catalog", 404},
		{"a push", "POST", "/v2/acme/app/blobs/uploads/", 405},
		{"a delete", "DELETE", "/v2/acme/app/manifests/" + u.digest.DigestStr(), 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
			}
		})
	}
	if n := u.blobGets[other]; n != 0 {
		t.Errorf("a refused digest reached upstream")
	}
}

func TestRelayAllowClassifiesUpstreamRefusal(t *testing.T) {
	u := newUpstream(t, 1)
	s := newServer(t, 0)
	missing := u.digest.Context().Digest("sha256:" + strings.Repeat("cd", 32))
	_, err := s.Allow(context.Background(), missing, registryauth.Anonymous)
	if err == nil {
		t.Fatal("Allow of a digest upstream lacks succeeded")
	}
	if c := failure.ClassOf(err); c != "not-found" {
		t.Errorf("class %q of %v, want not-found", c, err)
	}
}

func TestRelayCacheBound(t *testing.T) {
	u := newUpstream(t, 3)
	layers, _ := u.img.Layers()
	var biggest int64
	for _, l := range layers {
		n, _ := l.Size()
		biggest = max(biggest, n)
	}
	t.Run("evicts what nobody reads, fetching again", func(t *testing.T) {
		s := newServer(t, biggest+1)
		path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"a", "b"} {
			if err := pullThrough(t, s, h, path, u.digest); err != nil {
				t.Fatalf("host %s: %v", h, err)
			}
		}
		s.mu.Lock()
		used := s.used
		s.mu.Unlock()
		if used > biggest+1 {
			t.Errorf("cache holds %d bytes, bound %d", used, biggest+1)
		}
		refetched := 0
		for _, n := range s.Stats().BlobFetches {
			if n > 1 {
				refetched++
			}
		}
		if refetched == 0 {
			t.Errorf("no blob was fetched twice under a bound that holds one: %v", s.Stats().BlobFetches)
		}
	})
	t.Run("a blob larger than the bound is a CacheError", func(t *testing.T) {
		s := newServer(t, 10)
		path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := layers[0].Digest()
		_, err = s.openBlob(context.Background(), path, d.String())
		var ce *CacheError
		if !errors.As(err, &ce) {
			t.Fatalf("err = %v, want a CacheError", err)
		}
		if !errors.As(s.Err(path), &ce) {
			t.Errorf("the failure kept for the caller is %v, want the CacheError", s.Err(path))
		}
		if got := failure.ClassOf(err); got != "relay-cache" {
			t.Errorf("class %q, want relay-cache", got)
		}
		if !strings.Contains(err.Error(), "raise relay-cache-max") {
			t.Errorf("%q does not say what to raise", err)
		}
		srv := httptest.NewServer(s.Handler("h"))
		defer srv.Close()
		resp, err := http.Get(srv.URL + "/v2/" + path + "/blobs/" + d.String())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// Not a 5xx: dockerd retries those for about 75 s.
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), `"DENIED"`) {
			t.Errorf("a blob larger than the bound: %d %s, want 403 DENIED, which runtimes do not retry", resp.StatusCode, body)
		}
	})
}

func TestRelayCloseRemovesTheCache(t *testing.T) {
	u := newUpstream(t, 1)
	s := newServer(t, 0)
	path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	if err := pullThrough(t, s, "a", path, u.digest); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(s.Dir())
	if len(entries) == 0 {
		t.Fatalf("nothing cached in %s", s.Dir())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir()); !os.IsNotExist(err) {
		t.Errorf("cache dir still there after Close: %v", err)
	}
	if err := pullThrough(t, s, "a", path, u.digest); err == nil {
		t.Errorf("a closed relay still serves")
	}
	if _, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous); err == nil {
		t.Errorf("a closed relay still allows")
	}
}

func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		in              string
		path, kind, ref string
		ok              bool
	}{
		{"/v2/acme/app/manifests/sha256:ab", "acme/app", "manifests", "sha256:ab", true},
		{"/v2/a/b/c/blobs/sha256:ab", "a/b/c", "blobs", "sha256:ab", true},
		{"/v2/acme/app/blobs/uploads/", "", "", "", false},
		{"/v2/acme/app/tags/list", "", "", "", false},
		{"/v2//manifests/x", "", "", "", false},
		{"/other/acme/manifests/x", "", "", "", false},
	} {
		path, kind, ref, ok := parsePath(tc.in)
		if path != tc.path || kind != tc.kind || ref != tc.ref || ok != tc.ok {
			t.Errorf("parsePath(%q) = %q %q %q %v", tc.in, path, kind, ref, ok)
		}
	}
}

// The seam sshdeploy defines is satisfied without either package
// importing the other's types beyond the interface.
var _ sshdeploy.Relay = (*Server)(nil)

func TestRelayServeCountsPerHostAndEndsWithTheListener(t *testing.T) {
	u := newUpstream(t, 1)
	s := newServer(t, 0)
	path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l, "h1") }()
	resp, err := http.Get("http://" + l.Addr().String() + "/v2/" + path + "/manifests/" + u.digest.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || s.Served("h1", path) != int64(len(body)) || s.Served("h2", path) != 0 {
		t.Errorf("status %d, served h1 %d (body %d), h2 %d", resp.StatusCode, s.Served("h1", path), len(body), s.Served("h2", path))
	}
	l.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after the listener closed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not end with its listener")
	}
}
