package relay

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// TestRelayWarmsConnections: Allow opens the connections a fresh host's
// first blob fetches use (a HEAD of the config and the first layers, no
// body fetched), once per image, so those fetches dial nothing.
func TestRelayWarmsConnections(t *testing.T) {
	ctx := context.Background()
	u := newUpstream(t, 3) // config and layers: warmConns blobs
	// Each layer answers late, so the relay's fetches (the first layer's
	// and the read-ahead of the others) run at once, each on a connection.
	layers, _ := u.img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		u.answer[d.String()] = func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(50 * time.Millisecond)
			u.inner(w, r)
		}
	}
	// The production transport, a copy of its own: the push left
	// connections idle in the shared one.
	s, err := New(Options{Dir: t.TempDir(), Transport: remote.DefaultTransport.(*http.Transport).Clone()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	path, err := s.Allow(ctx, u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	s.warming.Wait()
	if _, err := s.Allow(ctx, u.digest, registryauth.Anonymous); err != nil {
		t.Fatal(err)
	}
	s.warming.Wait()
	u.mu.Lock()
	heads, gets, dialled := 0, len(u.blobGets), u.conns
	for _, n := range u.blobHeads {
		heads += n
	}
	u.mu.Unlock()
	if heads != warmConns || gets != 0 {
		t.Errorf("Allow, twice: %d blob HEADs and %d GETs upstream, want %d HEADs (once) and no GET", heads, gets, warmConns)
	}
	if err := pullThrough(t, s, "h", path, u.digest); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	more := u.conns - dialled
	u.mu.Unlock()
	if more != 0 {
		t.Errorf("a fresh host's pull dialled the registry %d times more, want none: Allow opened them", more)
	}
}
