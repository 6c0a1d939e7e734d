package relay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// layer returns the digest and bytes of the upstream image's i-th layer.
func (u *upstream) layer(t *testing.T, i int) (string, []byte) {
	t.Helper()
	layers, err := u.img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := layers[i].Digest()
	rc, err := layers[i].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	body, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return d.String(), body
}

// serve makes the upstream answer dgst's GET with body (Content-Length
// len(body)): its first half at once, the rest once release is closed.
func (u *upstream) serve(dgst string, body []byte, release <-chan struct{}) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.answer[dgst] = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		half := len(body) / 2
		_, _ = w.Write(body[:half])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(body[half:])
	}
}

func (u *upstream) gets(dgst string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.blobGets[dgst]
}

// within fails the test unless f returns in time (a read the relay holds
// back would hang the test otherwise).
func within[T any](t *testing.T, what string, f func() (T, error)) T {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("%s: %v", what, r.err)
		}
		return r.v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer in 10 s", what)
	}
	panic("unreachable")
}

func blobURL(srv *httptest.Server, path, dgst string) string {
	return srv.URL + "/v2/" + path + "/blobs/" + dgst
}

func TestRelayStreamsABlobWhileFetchingIt(t *testing.T) {
	u := newUpstream(t, 1)
	dgst, body := u.layer(t, 0)
	release := make(chan struct{})
	u.serve(dgst, body, release)
	s := newServer(t, 0)
	path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler("h"))
	defer srv.Close()
	half := len(body) / 2
	// Two hosts ask while the registry has sent only half: both get that
	// half now, from the one fetch.
	var resps []*http.Response
	for i := range 2 {
		resp := within(t, "GET "+strconv.Itoa(i), func() (*http.Response, error) { return http.Get(blobURL(srv, path, dgst)) })
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(body)) {
			t.Fatalf("reader %d: %d, Content-Length %d, want 200 and %d", i, resp.StatusCode, resp.ContentLength, len(body))
		}
		got := within(t, "the first half, before the upstream finished", func() ([]byte, error) {
			buf := make([]byte, half)
			_, err := io.ReadFull(resp.Body, buf)
			return buf, err
		})
		if !bytes.Equal(got, body[:half]) {
			t.Fatalf("reader %d: the first half differs", i)
		}
		resps = append(resps, resp)
	}
	if n, f := u.gets(dgst), s.Stats().BlobFetches[dgst]; n != 1 || f != 1 {
		t.Errorf("upstream GETs %d, fetches %d, want one for both readers", n, f)
	}
	close(release)
	for i, resp := range resps {
		rest := within(t, "the rest", func() ([]byte, error) { return io.ReadAll(resp.Body) })
		if !bytes.Equal(rest, body[half:]) {
			t.Errorf("reader %d: the rest differs (%d bytes, want %d)", i, len(rest), len(body)-half)
		}
	}
	// A later host reads the cache.
	resp := within(t, "GET from the cache", func() (*http.Response, error) { return http.Get(blobURL(srv, path, dgst)) })
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Errorf("from the cache: %d bytes, %v", len(got), err)
	}
	if n := u.gets(dgst); n != 1 {
		t.Errorf("upstream GETs %d, want 1", n)
	}
	// A Range request (a runtime resuming) on the cached blob.
	req, _ := http.NewRequest(http.MethodGet, blobURL(srv, path, dgst), nil)
	req.Header.Set("Range", "bytes="+strconv.Itoa(half)+"-")
	resp = within(t, "a Range GET", func() (*http.Response, error) { return http.DefaultClient.Do(req) })
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, body[half:]) {
		t.Errorf("Range: %d, %d bytes, want 206 and %d", resp.StatusCode, len(got), len(body)-half)
	}
}

func TestRelayCutsAndForgetsABadBlob(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  func(body []byte) []byte
	}{
		{"wrong digest", func(body []byte) []byte {
			b := bytes.Clone(body)
			b[len(b)-1] ^= 0xff
			return b
		}},
		{"longer than the manifest says", func(body []byte) []byte { return append(bytes.Clone(body), 0) }},
		{"shorter than the manifest says", func(body []byte) []byte { return body[:len(body)-1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t, 1)
			dgst, body := u.layer(t, 0)
			release := make(chan struct{})
			close(release)
			u.serve(dgst, tc.bad(body), release)
			s := newServer(t, 0)
			path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(s.Handler("h"))
			defer srv.Close()
			// A new connection each time: Go's transport silently retries
			// a GET whose reused connection closed before any answer.
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			for i := 1; i <= 2; i++ {
				// Headers may have gone out (200) before the fetch failed,
				// or not even they; either way the connection is cut, and
				// the blob never delivered whole.
				resp, err := client.Get(blobURL(srv, path, dgst))
				if err == nil {
					got, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					if rerr == nil && resp.StatusCode == http.StatusOK {
						t.Errorf("GET %d: a bad blob was delivered whole (%d bytes, no error)", i, len(got))
					}
				}
				// Never kept: the next request fetches again.
				if n := u.gets(dgst); n != i {
					t.Errorf("GET %d: upstream GETs %d, want %d (a bad blob is not cached)", i, n, i)
				}
			}
			s.mu.Lock()
			_, cached := s.blobs[dgst]
			used := s.used
			s.mu.Unlock()
			if cached || used != 0 {
				t.Errorf("the bad blob is in the cache (%v) or holds room (%d bytes)", cached, used)
			}
			if entries, _ := os.ReadDir(s.Dir()); len(entries) != 0 {
				t.Errorf("files left in the cache: %v", entries)
			}
			if s.Err(path) == nil {
				t.Errorf("no upstream failure kept for the caller")
			}
		})
	}
}

func TestRelayEvictionSparesABlobBeingWritten(t *testing.T) {
	u := newUpstream(t, 2)
	a, bodyA := u.layer(t, 0)
	b, bodyB := u.layer(t, 1)
	release := make(chan struct{})
	u.serve(a, bodyA, release)
	// Room for either layer, not both.
	s := newServer(t, int64(len(bodyA)+len(bodyB)-1))
	path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	// A host starts a and goes away: a is still being written, read by
	// nobody.
	ctx, cancel := context.WithCancel(context.Background())
	rd, err := s.openBlob(ctx, path, a)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "the first bytes of a", func() (int, error) { return rd.Read(make([]byte, 1)) })
	cancel()
	rd.Close()
	_, err = s.openBlob(context.Background(), path, b)
	var ce *CacheError
	if !errors.As(err, &ce) {
		t.Fatalf("b while a is being written: %v, want a CacheError (a must not be evicted)", err)
	}
	close(release)
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.blobs[a] != nil && s.blobs[a].done
	})
	// Complete and unread, a may go now.
	rd, err = s.openBlob(context.Background(), path, b)
	if err != nil {
		t.Fatalf("b once a is complete: %v", err)
	}
	got := within(t, "b", func() ([]byte, error) { return io.ReadAll(rd) })
	rd.Close()
	if !bytes.Equal(got, bodyB) {
		t.Errorf("b: %d bytes, want %d", len(got), len(bodyB))
	}
	if n := s.Stats().BlobFetches[a]; n != 1 {
		t.Errorf("a fetched %d times, want 1", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
	}
}

func TestRelayHoldsTheLastByteUntilTheDigestIsChecked(t *testing.T) {
	u := newUpstream(t, 1)
	dgst, body := u.layer(t, 0)
	release := make(chan struct{})
	// Every byte, chunked (no Content-Length), then the registry holds the
	// end of the body: ggcr checks the digest only at the end.
	u.mu.Lock()
	u.answer[dgst] = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	u.mu.Unlock()
	s := newServer(t, 0)
	path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := s.openBlob(context.Background(), path, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got := within(t, "all but the last byte", func() ([]byte, error) {
		buf := make([]byte, len(body)-1)
		_, err := io.ReadFull(rd, buf)
		return buf, err
	})
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return rd.b.written == int64(len(body))
	})
	last := make(chan int, 1)
	go func() {
		n, _ := rd.Read(make([]byte, 1))
		last <- n
	}()
	select {
	case <-last:
		t.Fatal("the last byte was read before the digest check")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if n := within(t, "the last byte", func() (int, error) { return <-last, nil }); n != 1 || !bytes.Equal(got, body[:len(body)-1]) {
		t.Errorf("the last read gave %d bytes", n)
	}
}
