package relay

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/registrytest"
)

// storeRun is one step with a store: allow u's image, pull it through the
// relay (again once if a blob's response was cut, as a runtime retries),
// complete the store, name the image acme/app:1 and close. retried says
// whether the pull had to be retried.
func storeRun(t *testing.T, u *upstream, store string, max int64) (st Stats, retried bool, err error) {
	t.Helper()
	s, err := New(Options{Store: store, MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	path, err := s.Allow(context.Background(), u.digest, registryauth.Anonymous)
	if err == nil {
		if err = pullThrough(t, s, "local", path, u.digest); err != nil {
			retried = true
			err = pullThrough(t, s, "local", path, u.digest)
		}
	}
	if err == nil {
		err = s.Complete(context.Background())
	}
	ref, _ := name.ParseReference(u.host + "/acme/app:1")
	s.Name(ref, u.digest.DigestStr())
	st = s.Stats()
	return st, retried, errors.Join(err, s.Close())
}

func blobFiles(t *testing.T, store string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	files, _ := os.ReadDir(filepath.Join(store, "blobs", "sha256"))
	for _, f := range files {
		fi, _ := f.Info()
		out[f.Name()] = fi.Size()
	}
	return out
}

// imageBlobs are the digests of u's manifest, config and layers.
func imageBlobs(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	d, _ := img.Digest()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []v1.Hash{d, m.Config.Digest}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

func TestStore(t *testing.T) {
	truncate := func(p string) { _ = os.Truncate(p, 10) }
	for _, tc := range []struct {
		name string
		// damage is done to the warm store before the second step: to
		// the first layer, or the manifest.
		damage      func(p string)
		damageWhich string // "layer" or "manifest"
		// wantBlobGets is the upstream blob GETs of the second step.
		wantBlobGets, wantManifestGets int
		// mayCut: the damage may cut a response (a runtime retries).
		mayCut bool
	}{
		{name: "warm: nothing fetched upstream"},
		{name: "a flipped byte in a layer: discarded, fetched once", damage: flipByte, damageWhich: "layer", wantBlobGets: 1, mayCut: true},
		{name: "a truncated layer: discarded, fetched once", damage: truncate, damageWhich: "layer", wantBlobGets: 1},
		{name: "a damaged manifest: fetched again", damage: flipByte, damageWhich: "manifest", wantManifestGets: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t, 3)
			store := filepath.Join(t.TempDir(), "cache")
			first, _, err := storeRun(t, u, store, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(first.BlobFetches) != 4 || len(first.ManifestFetches) != 1 {
				t.Fatalf("cold step fetched blobs %v, manifests %v; want the config and 3 layers, one manifest", first.BlobFetches, first.ManifestFetches)
			}
			m, _ := u.img.Manifest()
			var damaged string
			if tc.damage != nil {
				damaged = m.Layers[0].Digest.String()
				if tc.damageWhich == "manifest" {
					damaged = u.digest.DigestStr()
				}
				tc.damage(filepath.Join(store, "blobs", "sha256", strings.TrimPrefix(damaged, "sha256:")))
			}
			u.blobGets = map[string]int{}
			second, retried, err := storeRun(t, u, store, 0)
			if err != nil {
				t.Fatalf("the warm step served something that is not the image: %v", err)
			}
			if retried && !tc.mayCut {
				t.Errorf("the pull had to be retried (a response was cut)")
			}
			gets := 0
			for _, n := range u.blobGets {
				gets += n
			}
			if gets != tc.wantBlobGets || len(second.ManifestFetches) != tc.wantManifestGets {
				t.Errorf("warm step: %d upstream blob GETs %v, manifests %v; want %d and %d", gets, u.blobGets, second.ManifestFetches, tc.wantBlobGets, tc.wantManifestGets)
			}
			if damaged != "" && second.Discarded[damaged] != 1 {
				t.Errorf("discarded %v, want %s once", second.Discarded, damaged)
			}
			if damaged == "" && len(second.Reused) != 4 {
				t.Errorf("reused %v, want the config and 3 layers", second.Reused)
			}
			checkLayout(t, store, u)
		})
	}
}

// checkLayout reads the store back with go-containerregistry: index.json
// names the image by the user's reference at its digest, and every blob is
// intact.
func checkLayout(t *testing.T, store string, u *upstream) {
	t.Helper()
	h, err := v1.NewHash(u.digest.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	registrytest.CheckLayout(t, store, u.host+"/acme/app:1", h)
	for _, p := range []string{"oci-layout", "index.json"} {
		if fi, err := os.Stat(filepath.Join(store, p)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: %v, mode %v, want 0644", p, err, fi.Mode().Perm())
		}
	}
	for h := range blobFiles(t, store) {
		if fi, _ := os.Stat(filepath.Join(store, "blobs", "sha256", h)); fi.Mode().Perm() != 0o644 {
			t.Errorf("blob %s has mode %v, want 0644 (actions/cache runs as the runner's user)", h, fi.Mode().Perm())
		}
	}
}

func TestStorePrune(t *testing.T) {
	u := newUpstream(t, 2)
	store := filepath.Join(t.TempDir(), "cache")
	if _, _, err := storeRun(t, u, store, 0); err != nil {
		t.Fatal(err)
	}
	// The tag moves to an image that shares one layer with the old one.
	ol, _ := u.img.Layers()
	fresh, _ := random.Image(4096, 1)
	next, err := mutate.AppendLayers(fresh, ol[0])
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(u.host + "/acme/app:1")
	if err := remote.Write(ref, next); err != nil {
		t.Fatal(err)
	}
	d, _ := next.Digest()
	u.img, u.digest = next, ref.Context().Digest(d.String())
	// What a killed step leaves: a partial file.
	_ = os.WriteFile(filepath.Join(store, "blobs", "sha256", "partial-123"), []byte("x"), 0o600)
	u.blobGets = map[string]int{}
	st, _, err := storeRun(t, u, store, 0)
	if err != nil {
		t.Fatal(err)
	}
	shared, _ := ol[0].Digest()
	if u.blobGets[shared.String()] != 0 {
		t.Errorf("the shared layer was fetched again: %v", u.blobGets)
	}
	if len(st.Reused) != 1 {
		t.Errorf("reused %v, want the shared layer", st.Reused)
	}
	want := map[string]bool{}
	for _, h := range imageBlobs(t, next) {
		want[h.Hex] = true
	}
	have := blobFiles(t, store)
	for h := range have {
		if !want[h] {
			t.Errorf("the store kept %s, which the step did not use", h)
		}
	}
	for h := range want {
		if _, ok := have[h]; !ok {
			t.Errorf("the store lost %s, which the step used", h)
		}
	}
	checkLayout(t, store, u)
}

// TestStoreBound: the store never holds more blob bytes than MaxBytes, and
// a blob larger than the bound is refused, not stored.
func TestStoreBound(t *testing.T) {
	for _, tc := range []struct {
		name    string
		max     int64
		wantErr bool
	}{
		{name: "room for two layers of three: the oldest evicted", max: 2*4096 + 2048},
		{name: "room for no layer: refused", max: 2048, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t, 3)
			store := filepath.Join(t.TempDir(), "cache")
			_, _, err := storeRun(t, u, store, tc.max)
			// The runtime is refused with the bound's own words.
			if refused := err != nil && strings.Contains(err.Error(), "relay-cache-max"); refused != tc.wantErr {
				t.Fatalf("err = %v, want refused by the bound: %v", err, tc.wantErr)
			}
			d, _ := u.img.Digest()
			var sum int64
			for h, n := range blobFiles(t, store) {
				if h != d.Hex {
					sum += n
				}
			}
			if sum > tc.max {
				t.Errorf("the store holds %d blob bytes, above the bound %d", sum, tc.max)
			}
		})
	}
}
