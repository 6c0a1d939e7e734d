package imagefile

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// archiveManifest reads manifest.json, what docker load reads.
func archiveManifest(t *testing.T, path string) tarball.Manifest {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no manifest.json in %s: %v", path, err)
		}
		if h.Name == "manifest.json" {
			var m tarball.Manifest
			if err := json.NewDecoder(tr).Decode(&m); err != nil {
				t.Fatal(err)
			}
			return m
		}
		_, _ = io.Copy(io.Discard, tr)
	}
}

func TestTar(t *testing.T) {
	r := newReg(t)
	ctx := context.Background()
	single := platformed(t, "linux", "amd64")
	ii, native, other := twoPlatforms(t)
	sref, sdigest := r.push(t, "acme/single:1", single)
	iref, idigest := r.pushIndex(t, "acme/multi:2", ii)
	ocf, _ := other.ConfigFile()

	cases := []struct {
		name     string
		input    string // the user's reference
		ref      name.Reference
		digest   string
		platform *ocispec.Platform
		want     v1.Image // the image the archive must hold
		wantTags []string
		wantBad  string // an input the error must name
	}{
		{name: "a tag names the image", input: sref.String(), ref: sref, digest: sdigest, want: single, wantTags: []string{sref.String()}},
		{name: "a digest leaves it untagged", input: pinned(sref, sdigest), ref: sref, digest: sdigest, want: single},
		{name: "tag and digest: the tag names it", input: sref.String() + "@" + sdigest, ref: sref, digest: sdigest, want: single, wantTags: []string{sref.String()}},
		{name: "an index gives the machine's platform", input: iref.String(), ref: iref, digest: idigest, want: native, wantTags: []string{iref.String()}},
		{name: "an index gives the platform asked for", input: iref.String(), ref: iref, digest: idigest, want: other, wantTags: []string{iref.String()},
			platform: &ocispec.Platform{OS: "linux", Architecture: ocf.Architecture}},
		{name: "a platform the index lacks", input: iref.String(), ref: iref, digest: idigest, wantBad: "platform",
			platform: &ocispec.Platform{OS: "windows", Architecture: "amd64"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "sub", "app.tar")
			tf, err := NewTar(path, tc.input, Options{})
			if err != nil {
				t.Fatal(err)
			}
			pulled, err := tf.Pull(ctx, pinned(tc.ref, tc.digest), tc.platform, registryauth.Anonymous, nil)
			if tc.wantBad != "" {
				var bad *failure.BadInput
				if !errors.As(err, &bad) || bad.Input != tc.wantBad {
					t.Fatalf("error %v, want bad input %s", err, tc.wantBad)
				}
				if _, err := os.Stat(path); err == nil {
					t.Error("a file was written")
				}
				noTemps(t, filepath.Dir(path))
				return
			}
			if err != nil || !pulled {
				t.Fatalf("Pull: %v, pulled %v", err, pulled)
			}
			m := archiveManifest(t, path)
			if len(m) != 1 || !slices.Equal(m[0].RepoTags, tc.wantTags) {
				t.Errorf("manifest.json %+v, want one image tagged %v", m, tc.wantTags)
			}
			img, err := tarball.ImageFromPath(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			gotID, _ := img.ConfigName()
			wantID, _ := tc.want.ConfigName()
			gotLayers, _ := img.Layers()
			wantLayers, _ := tc.want.Layers()
			if gotID != wantID || len(gotLayers) != len(wantLayers) {
				t.Errorf("archive holds config %s, want %s", gotID, wantID)
			}
			for i := range gotLayers {
				g, _ := gotLayers[i].Digest()
				w, _ := wantLayers[i].Digest()
				if g != w {
					t.Errorf("layer %d is %s, want %s", i, g, w)
				}
			}
			if err := tf.Tag(ctx, pinned(tc.ref, tc.digest), tc.input); err != nil && len(tc.wantTags) > 0 {
				t.Errorf("Tag with the archive's own name: %v", err)
			}
			if err := tf.Tag(ctx, pinned(tc.ref, tc.digest), tc.ref.Context().String()+":other"); err == nil {
				t.Error("Tag accepted a name the archive does not carry")
			}
			info, err := tf.Inspect(ctx, tc.input)
			if err != nil {
				t.Fatal(err)
			}
			cf, _ := tc.want.ConfigFile()
			if info.ID != wantID.String() || info.PlatformString() != cf.OS+"/"+cf.Architecture ||
				len(info.RepoDigests) != 1 || info.Digest(tc.ref.String(), "") != tc.digest {
				t.Errorf("Inspect = %+v", info)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
				t.Errorf("mode %v, want 0644 (readable by the runner's user)", fi.Mode())
			}
			noTemps(t, filepath.Dir(path))
		})
	}
	_ = runtime.GOARCH
}

// TestTarReplaces: an existing archive is replaced whole.
func TestTarReplaces(t *testing.T) {
	r := newReg(t)
	ref, digest := r.push(t, "acme/r:1", platformed(t, "linux", "amd64"))
	path := filepath.Join(t.TempDir(), "app.tar")
	if err := os.WriteFile(path, []byte("an older, longer archive than this one ever was..."), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, _ := NewTar(path, ref.String(), Options{})
	if _, err := tf.Pull(context.Background(), pinned(ref, digest), nil, registryauth.Anonymous, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tarball.ImageFromPath(path, nil); err != nil {
		t.Errorf("the replaced archive does not read: %v", err)
	}
}
