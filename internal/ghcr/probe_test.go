package ghcr

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
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
	_, err := Probe(context.Background(), ref, Credentials{Mode: AuthToken, Username: "u", Password: "p"}, WithTransport(rt))
	if err == nil {
		t.Fatal("probe succeeded")
	}
	for _, u := range rt.urls {
		if u[:5] == "http:" {
			t.Errorf("plain HTTP request sent: %s", u)
		}
	}

	rt = &recordingTransport{}
	_, _ = Probe(context.Background(), ref, Anonymous, WithTransport(rt), WithInsecureRegistries("10.9.8.7:5000"))
	sawHTTP := false
	for _, u := range rt.urls {
		sawHTTP = sawHTTP || u[:5] == "http:"
	}
	if !sawHTTP {
		t.Errorf("insecure-registry listed, yet no HTTP attempt: %v", rt.urls)
	}
}
