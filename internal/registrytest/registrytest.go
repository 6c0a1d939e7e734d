// Package registrytest serves in-process registries for unit tests (the
// adapters' and the policy's) and reads OCI layouts back; only tests
// import it.
package registrytest

import (
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/imagefile"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Open serves an in-process registry (no auth: every credential is
// accepted) holding one random image, closed when the test ends, and
// returns the image's reference (<host>/acme/app:1) and digest.
func Open(t testing.TB) (ref, digest string) {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	ref = strings.TrimPrefix(srv.URL, "http://") + "/acme/app:1"
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref, d.String()
}

// CheckLayout reads the OCI layout at dir back with go-containerregistry
// and fails the test unless index.json holds exactly one entry, ref at
// digest, whose config and layers are all there and intact. It returns
// the image's blobs (config first), for the caller's own checks.
func CheckLayout(t testing.TB, dir, ref string, digest v1.Hash) []v1.Descriptor {
	t.Helper()
	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != digest || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref {
		raw, _ := json.Marshal(im)
		t.Fatalf("index.json %s, want one entry %s at %s", raw, ref, digest)
	}
	img, err := lp.Image(digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := append([]v1.Descriptor{m.Config}, m.Layers...)
	for _, b := range blobs {
		if !imagefile.Intact(filepath.Join(dir, "blobs", "sha256", b.Digest.Hex), b.Digest, b.Size) {
			t.Errorf("blob %s is missing or damaged in the layout", b.Digest)
		}
	}
	return blobs
}
