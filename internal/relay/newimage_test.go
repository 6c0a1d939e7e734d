package relay

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// TestNewImage: a host that asked for an image's config (GET) holds an
// image new to it, known by the config's digest, reported once; one that
// asked only for the manifest (it had the image), asked by HEAD, or asked
// under another path, does not.
func TestNewImage(t *testing.T) {
	ctx := context.Background()
	u := newUpstream(t, 1)
	other, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: other})
	idxRef, _ := name.ParseReference(u.host + "/acme/app:multi")
	if err := remote.WriteIndex(idxRef, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	otherDigest, _ := other.Digest()
	cfg, _ := u.img.ConfigName()
	otherCfg, _ := other.ConfigName()

	s := newServer(t, 0)
	path, err := s.Allow(ctx, u.digest, registryauth.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Allow(ctx, idxRef.Context().Digest(idxDigest.String()), registryauth.Anonymous); err != nil {
		t.Fatal(err)
	}
	ask := func(host, method, kind, dgst string) {
		t.Helper()
		srv := httptest.NewServer(s.Handler(host))
		defer srv.Close()
		req, _ := http.NewRequest(method, srv.URL+"/v2/"+path+"/"+kind+"/"+dgst, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s %s: %s", method, kind, dgst, resp.Status)
		}
	}
	ask("fresh", "GET", "manifests", u.digest.DigestStr())
	ask("fresh", "GET", "blobs", cfg.String())
	ask("had", "GET", "manifests", u.digest.DigestStr())
	ask("headed", "HEAD", "blobs", cfg.String())
	ask("multi", "GET", "manifests", idxDigest.String())
	ask("multi", "GET", "manifests", otherDigest.String())
	ask("multi", "GET", "blobs", otherCfg.String())

	for _, tc := range []struct {
		host, path, dgst string
		want             string // "" for none
	}{
		{"fresh", path, u.digest.DigestStr(), cfg.String()},
		{"fresh", path, u.digest.DigestStr(), ""}, // reported once
		{"had", path, u.digest.DigestStr(), ""},
		{"headed", path, u.digest.DigestStr(), ""},
		{"fresh", "acme/other", u.digest.DigestStr(), ""},
		{"multi", path, idxDigest.String(), otherCfg.String()},
		{"multi", path, u.digest.DigestStr(), ""},
		{"fresh", path, idxDigest.String(), ""},
	} {
		id, ok := s.NewImage(tc.host, tc.path, tc.dgst)
		if ok != (tc.want != "") || id != tc.want {
			t.Errorf("NewImage(%s, %s, %.19s) = %q, %v; want %q", tc.host, tc.path, tc.dgst, id, ok, tc.want)
		}
	}
}
