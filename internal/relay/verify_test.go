package relay

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// verifyRig is a step on a warm store (u's image pulled once into it): a
// relay on the store, u's image allowed, served over HTTP.
type verifyRig struct {
	u     *upstream
	store string
	s     *Server
	srv   *httptest.Server
	path  string
	// layer is u's first layer: its digest, bytes and file in the store.
	layer string
	body  []byte
	file  string
}

// newVerifyRig warms a store with u's image, damages the first layer's
// file (damage may be nil) and opens a relay on it; pace, when set,
// becomes the relay's verify hook.
func newVerifyRig(t *testing.T, u *upstream, damage func(p string), pace func(int64)) *verifyRig {
	t.Helper()
	r := &verifyRig{u: u, store: filepath.Join(t.TempDir(), "cache")}
	if _, _, err := storeRun(t, u, r.store, 0); err != nil {
		t.Fatal(err)
	}
	r.layer, r.body = u.layer(t, 0)
	r.file = filepath.Join(r.store, "blobs", "sha256", strings.TrimPrefix(r.layer, "sha256:"))
	if damage != nil {
		damage(r.file)
	}
	u.mu.Lock()
	u.blobGets = map[string]int{}
	u.mu.Unlock()
	s, err := New(Options{Store: r.store})
	if err != nil {
		t.Fatal(err)
	}
	s.paced = pace
	r.s = s
	t.Cleanup(func() { s.Close() })
	if r.path, err = s.Allow(context.Background(), u.digest, registryauth.Anonymous); err != nil {
		t.Fatal(err)
	}
	r.srv = httptest.NewServer(s.Handler("h"))
	t.Cleanup(r.srv.Close)
	return r
}

// get asks for the first layer on a new connection (Go's transport
// silently retries a GET whose reused connection closed before any
// answer) and returns what it read.
func (r *verifyRig) get(t *testing.T) (*http.Response, []byte, error) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(blobURL(r.srv, r.path, r.layer))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	return resp, got, err
}

func flipByte(p string) {
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 0xff
	_ = os.WriteFile(p, b, 0o644)
}

// TestStoreCutsADamagedBlob: a cached blob of the right size with a
// flipped byte is served while it is hashed, so it cannot be refused
// before its first bytes; its response is cut, never ended as if whole,
// and the next request (a runtime's retry) gets the blob from upstream.
// The hook holds the verifier once it has hashed the whole file, before
// it compares the digest.
func TestStoreCutsADamagedBlob(t *testing.T) {
	release := make(chan struct{})
	var size int64
	pace := func(hashed int64) {
		if hashed == size {
			<-release
		}
	}
	u := newUpstream(t, 1)
	_, body := u.layer(t, 0)
	size = int64(len(body))
	r := newVerifyRig(t, u, flipByte, pace)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp := within(t, "GET", func() (*http.Response, error) { return client.Get(blobURL(r.srv, r.path, r.layer)) })
	defer resp.Body.Close()
	within(t, "all but the last byte", func() (int, error) { return io.ReadFull(resp.Body, make([]byte, size-1)) })
	once.Do(func() { close(release) })
	rest, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("a damaged blob was served whole: %d bytes, then the end of the body", size-1+int64(len(rest)))
	}
	if _, err := os.Stat(r.file); !os.IsNotExist(err) {
		t.Errorf("the damaged file is still in the store: %v", err)
	}
	if st := r.s.Stats(); st.Discarded[r.layer] != 1 || st.Reused[r.layer] != 0 {
		t.Errorf("discarded %v, reused %v; want %s discarded once, not reused", st.Discarded, st.Reused, r.layer)
	}
	if err := r.s.Err(r.path); err != nil {
		t.Errorf("a damaged copy in the store was kept as an upstream failure: %v", err)
	}
	retry, got, err := r.get(t)
	if err != nil || retry.StatusCode != http.StatusOK || !bytes.Equal(got, r.body) {
		t.Fatalf("the retry: %v, %d bytes, want 200 and the blob's %d", err, len(got), len(r.body))
	}
	if n := r.u.gets(r.layer); n != 1 {
		t.Errorf("upstream GETs of the layer %d, want 1", n)
	}
	r.s.Close()
	if b, err := os.ReadFile(r.file); err != nil || !bytes.Equal(b, r.body) {
		t.Errorf("the store's copy after the step: %v, %d bytes, want the blob", err, len(b))
	}
}

// TestStoreRefetchesATruncatedBlob: a cached blob shorter than its
// manifest says (a truncated restore) is seen before anything is served
// and fetched upstream: the runtime's one request is answered whole.
func TestStoreRefetchesATruncatedBlob(t *testing.T) {
	r := newVerifyRig(t, newUpstream(t, 1), func(p string) { _ = os.Truncate(p, 100) }, nil)
	resp, got, err := r.get(t)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, r.body) {
		t.Fatalf("GET: %v, %d bytes, want 200 and the blob's %d (no cut response)", err, len(got), len(r.body))
	}
	if n := r.u.gets(r.layer); n != 1 {
		t.Errorf("upstream GETs of the layer %d, want 1", n)
	}
	if st := r.s.Stats(); st.Discarded[r.layer] != 1 {
		t.Errorf("discarded %v, want %s once", st.Discarded, r.layer)
	}
}

// TestStoreServesBeforeHashing: a runtime gets a cached blob's first
// bytes while the rest is still being hashed, and the blob whole once
// the digest matched. The hook holds the verifier after its first chunk.
func TestStoreServesBeforeHashing(t *testing.T) {
	release := make(chan struct{})
	pace := func(hashed int64) {
		if hashed == verifyChunk {
			<-release
		}
	}
	r := newVerifyRig(t, newUpstreamOf(t, 3*verifyChunk, 1), nil, pace)
	// Registered after the rig's: a failing test releases the verifier
	// before the server waits for its handlers.
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	resp := within(t, "GET", func() (*http.Response, error) { return http.Get(blobURL(r.srv, r.path, r.layer)) })
	defer resp.Body.Close()
	first := within(t, "the first chunk, before the blob was hashed whole", func() ([]byte, error) {
		buf := make([]byte, verifyChunk)
		_, err := io.ReadFull(resp.Body, buf)
		return buf, err
	})
	if !bytes.Equal(first, r.body[:verifyChunk]) {
		t.Fatal("the first chunk differs from the blob's")
	}
	r.s.mu.Lock()
	b := r.s.blobs[r.layer]
	hashed, done := b.written, b.done
	r.s.mu.Unlock()
	if done || hashed >= int64(len(r.body)) {
		t.Errorf("the verifier had hashed %d of %d bytes (done %v) when the first were served; want it held after %d", hashed, len(r.body), done, verifyChunk)
	}
	once.Do(func() { close(release) })
	rest := within(t, "the rest", func() ([]byte, error) { return io.ReadAll(resp.Body) })
	if !bytes.Equal(append(first, rest...), r.body) {
		t.Errorf("served %d bytes, not the blob's %d", len(first)+len(rest), len(r.body))
	}
	if st := r.s.Stats(); st.Reused[r.layer] != 1 || r.u.gets(r.layer) != 0 {
		t.Errorf("reused %v, upstream GETs %d; want the layer from the store, none upstream", st.Reused, r.u.gets(r.layer))
	}
}

// TestStoreCompleteReplacesADamagedBlob: Complete ends with every blob of
// the image intact in the store, whether the damaged blob is one no host
// asked for or one being verified under a host's read when Complete
// starts.
func TestStoreCompleteReplacesADamagedBlob(t *testing.T) {
	for _, underRead := range []bool{false, true} {
		what := "a damaged blob no host asked for"
		if underRead {
			what = "a damaged blob being verified under a host's read"
		}
		t.Run(what, func(t *testing.T) {
			release := make(chan struct{})
			var pace func(int64)
			if underRead {
				pace = func(int64) { <-release }
			}
			u := newUpstream(t, 2)
			r := newVerifyRig(t, u, flipByte, pace)
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(release) }) })
			if underRead {
				rd, err := r.s.openBlob(context.Background(), r.path, r.layer)
				if err != nil {
					t.Fatal(err)
				}
				defer rd.Close()
				// Once Complete has joined the blob being verified, the
				// verifier goes on (and finds the flipped byte).
				go func() {
					for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
						r.s.mu.Lock()
						joined := rd.b.readers == 2
						r.s.mu.Unlock()
						if joined {
							break
						}
					}
					once.Do(func() { close(release) })
				}()
			}
			if err := within(t, "Complete", func() (error, error) { return r.s.Complete(context.Background()), nil }); err != nil {
				t.Fatalf("Complete: %v", err)
			}
			if st := r.s.Stats(); st.Discarded[r.layer] != 1 || u.gets(r.layer) != 1 {
				t.Errorf("discarded %v, upstream GETs %d; want the layer discarded and fetched once", st.Discarded, u.gets(r.layer))
			}
			ref, _ := name.ParseReference(u.host + "/acme/app:1")
			r.s.Name(ref, u.digest.DigestStr())
			if err := r.s.Close(); err != nil {
				t.Fatal(err)
			}
			checkLayout(t, r.store, u)
		})
	}
}
