package relay

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// aheadRig is a relay allowed a 3-layer image, served over HTTP.
type aheadRig struct {
	u      *upstream
	s      *Server
	srv    *httptest.Server
	path   string
	layers [3]string
	config string
}

func newAheadRig(t *testing.T, u *upstream, max int64) *aheadRig {
	t.Helper()
	r := &aheadRig{u: u, s: newServer(t, max)}
	for i := range r.layers {
		r.layers[i], _ = u.layer(t, i)
	}
	cfg, err := u.img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	r.config = cfg.String()
	if r.path, err = r.s.Allow(context.Background(), u.digest, registryauth.Anonymous); err != nil {
		t.Fatal(err)
	}
	r.srv = httptest.NewServer(r.s.Handler("h"))
	t.Cleanup(r.srv.Close)
	return r
}

// get reads blob dgst whole, as a host's runtime does.
func (r *aheadRig) get(t *testing.T, dgst string) {
	t.Helper()
	resp := within(t, "GET "+dgst, func() (*http.Response, error) { return http.Get(blobURL(r.srv, r.path, dgst)) })
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d, %v", dgst, resp.StatusCode, err)
	}
}

// eventually waits for each blob's upstream GETs to reach want.
func (r *aheadRig) eventually(t *testing.T, want int, dgsts ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, d := range dgsts {
		for r.u.gets(d) != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := r.u.gets(d); n != want {
			t.Errorf("upstream GETs of %s: %d, want %d", d, n, want)
		}
	}
}

// quiet checks that the blobs stay unfetched for a while: a read-ahead
// that should not happen would have started by then.
func (r *aheadRig) quiet(t *testing.T, dgsts ...string) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	for _, d := range dgsts {
		if n := r.u.gets(d); n != 0 {
			t.Errorf("upstream GETs of %s: %d, want 0 (no host asked for it)", d, n)
		}
	}
}

func (r *aheadRig) readAheads(t *testing.T, want int) {
	t.Helper()
	if n := r.s.Stats().ReadAheads; n != want {
		t.Errorf("ReadAheads = %d, want %d", n, want)
	}
}

func TestRelayReadsAheadAlongTheLayers(t *testing.T) {
	t.Run("a fresh host: the first layer brings the others", func(t *testing.T) {
		r := newAheadRig(t, newUpstream(t, 3), 0)
		r.get(t, r.config)
		r.quiet(t, r.layers[:]...) // the config reads nothing ahead
		r.get(t, r.layers[0])
		r.eventually(t, 1, r.layers[1], r.layers[2])
		r.get(t, r.layers[1])
		r.get(t, r.layers[2])
		r.eventually(t, 1, r.layers[1], r.layers[2]) // the host joined them
		r.readAheads(t, 2)
	})
	t.Run("an update: the top layer alone brings nothing", func(t *testing.T) {
		r := newAheadRig(t, newUpstream(t, 3), 0)
		r.get(t, r.config)
		r.get(t, r.layers[2])
		r.quiet(t, r.layers[0], r.layers[1])
		r.readAheads(t, 0)
	})
	t.Run("never by evicting", func(t *testing.T) {
		// Room for the top layer and the first beside each other, not a
		// third: reading layer 1 ahead would evict the top one.
		u := newUpstream(t, 3)
		var size int64
		for _, i := range []int{0, 2} {
			_, body := u.layer(t, i)
			size += int64(len(body))
		}
		r := newAheadRig(t, u, size+100)
		r.get(t, r.layers[2])
		r.get(t, r.layers[0])
		r.quiet(t, r.layers[1])
		r.get(t, r.layers[2])
		r.eventually(t, 1, r.layers[2]) // still cached: not evicted
		r.readAheads(t, 0)
	})
}
