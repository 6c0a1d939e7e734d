package imagefile

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// reg is an in-process registry that logs requests and can damage one
// blob or demand a bearer token.
type reg struct {
	host string
	mu   sync.Mutex
	log  []*http.Request
	// corrupt, when set, is a blob digest served with its bytes flipped.
	corrupt string
	// bearer, when set, is the only Authorization the registry accepts;
	// its token endpoint refuses everyone.
	bearer string
}

func newReg(t *testing.T) *reg {
	t.Helper()
	r := &reg{}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.log = append(r.log, req)
		corrupt, bearer := r.corrupt, r.bearer
		r.mu.Unlock()
		if bearer != "" {
			if req.URL.Path == "/token" {
				http.Error(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`, http.StatusForbidden)
				return
			}
			if req.Header.Get("Authorization") != "Bearer "+bearer {
				w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+req.Host+`/token",service="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
		}
		if corrupt != "" && strings.HasSuffix(req.URL.Path, "/blobs/"+corrupt) && req.Method == http.MethodGet {
			rec := httptest.NewRecorder()
			inner.ServeHTTP(rec, req)
			b := rec.Body.Bytes()
			b[len(b)/2] ^= 0xff
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(b)
			return
		}
		inner.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *reg) blobGets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, q := range r.log {
		if q.Method == http.MethodGet && strings.Contains(q.URL.Path, "/blobs/") {
			n++
		}
	}
	return n
}

func (r *reg) push(t *testing.T, repo string, img v1.Image) (name.Reference, string) {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref, d.String()
}

func (r *reg) pushIndex(t *testing.T, repo string, ii v1.ImageIndex) (name.Reference, string) {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, ii); err != nil {
		t.Fatal(err)
	}
	d, _ := ii.Digest()
	return ref, d.String()
}

func platformed(t *testing.T, os, arch string) v1.Image {
	t.Helper()
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = os, arch
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// twoPlatforms is an index of the machine's platform and s390x.
func twoPlatforms(t *testing.T) (v1.ImageIndex, v1.Image, v1.Image) {
	t.Helper()
	native, other := platformed(t, "linux", runtime.GOARCH), platformed(t, "linux", "s390x")
	if runtime.GOARCH == "s390x" {
		other = platformed(t, "linux", "ppc64le")
	}
	ocf, _ := other.ConfigFile()
	ii := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: native, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: ocf.Architecture}}})
	return ii, native, other
}

func pinned(ref name.Reference, digest string) string { return ref.Context().Digest(digest).String() }

func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".ghcr-pull-") {
			t.Errorf("left behind: %s", filepath.Join(dir, e.Name()))
		}
	}
}

func layoutEntries(t *testing.T, path string) map[string]v1.Descriptor {
	t.Helper()
	ii, err := layout.ImageIndexFromPath(path)
	if err != nil {
		t.Fatalf("reading the layout back: %v", err)
	}
	m, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]v1.Descriptor{}
	for _, d := range m.Manifests {
		out[d.Annotations[annotationImageName]] = d
	}
	return out
}

// TestLayout pulls by digest and tags, as pull does for a tagger, and
// reads the layout back with go-containerregistry.
func TestLayout(t *testing.T) {
	r := newReg(t)
	ctx := context.Background()
	single := platformed(t, "linux", "amd64")
	ii, native, other := twoPlatforms(t)
	nativeDigest, _ := native.Digest()
	otherLayers, _ := other.Layers()
	otherLayer, _ := otherLayers[0].Digest()

	cases := []struct {
		name     string
		index    bool
		platform *ocispec.Platform
		// wantTop is the digest index.json names: the pushed one, or
		// with a platform that platform's image.
		wantNative bool
		wantPlat   string
		wantOther  bool // the other platform's blobs are in the layout
	}{
		{name: "single image"},
		{name: "index kept whole", index: true, wantOther: true},
		{name: "index narrowed to a platform", index: true, platform: &ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
			wantNative: true, wantPlat: "linux/" + runtime.GOARCH},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := "acme/app" + string(rune('a'+i)) + ":1"
			var ref name.Reference
			var digest string
			if tc.index {
				ref, digest = r.pushIndex(t, repo, ii)
			} else {
				ref, digest = r.push(t, repo, single)
				tc.wantPlat = "linux/amd64"
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "out", "layout")
			l := NewLayout(path, Options{})
			var lastDone, lastTotal int64
			pulled, err := l.Pull(ctx, pinned(ref, digest), tc.platform, registryauth.Anonymous, func(d, t int64) { lastDone, lastTotal = d, t })
			if err != nil || !pulled {
				t.Fatalf("Pull: %v, pulled %v", err, pulled)
			}
			if lastTotal == 0 || lastDone != lastTotal {
				t.Errorf("progress ended at %d of %d", lastDone, lastTotal)
			}
			if err := l.Tag(ctx, pinned(ref, digest), ref.String()); err != nil {
				t.Fatal(err)
			}
			info, err := l.Inspect(ctx, ref.String())
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Digest(ref.String(), ""); len(info.RepoDigests) != 1 || got != digest {
				t.Errorf("RepoDigests %v, want %s in %s (the digest pulled, which pull checks)", info.RepoDigests, digest, ref.Context())
			}
			if info.PlatformString() != tc.wantPlat {
				t.Errorf("platform %q, want %q", info.PlatformString(), tc.wantPlat)
			}
			entries := layoutEntries(t, path)
			if len(entries) != 1 {
				t.Fatalf("index.json entries %v, want only the tag", entries)
			}
			d, ok := entries[ref.String()]
			if !ok {
				t.Fatalf("no entry named %s: %v", ref, entries)
			}
			want := digest
			if tc.wantNative {
				want = nativeDigest.String()
			}
			if d.Digest.String() != want || d.Annotations[annotationRefName] != ref.String() {
				t.Errorf("entry %+v, want digest %s named %s", d, want, ref)
			}
			// Every blob reachable from the entry is there and intact.
			lp, _ := layout.FromPath(path)
			if d.MediaType.IsIndex() {
				got, err := lp.ImageIndex()
				if err == nil {
					var child v1.ImageIndex
					child, err = got.ImageIndex(d.Digest)
					if err == nil {
						err = validateIndex(child)
					}
				}
				if err != nil {
					t.Errorf("the layout's index does not validate: %v", err)
				}
			} else if img, err := lp.Image(d.Digest); err != nil {
				t.Errorf("the layout's image: %v", err)
			} else if err := validateImage(img); err != nil {
				t.Errorf("the layout's image does not validate: %v", err)
			}
			_, err = os.Stat(filepath.Join(path, "blobs", "sha256", otherLayer.Hex))
			if (err == nil) != tc.wantOther {
				t.Errorf("the other platform's layer in the layout: %v, want %v", err == nil, tc.wantOther)
			}
			noTemps(t, filepath.Dir(path))
			for _, p := range []string{path, filepath.Join(path, "blobs", "sha256"), filepath.Join(path, "index.json")} {
				fi, err := os.Stat(p)
				if err != nil || fi.Mode().Perm()&0o044 != 0o044 {
					t.Errorf("%s not readable by others (the runner's user): %v", p, fi.Mode())
				}
			}

			// The same image again fetches nothing and says so.
			before := r.blobGets()
			pulled, err = NewLayout(path, Options{}).Pull(ctx, pinned(ref, digest), tc.platform, registryauth.Anonymous, nil)
			if err != nil || pulled {
				t.Errorf("second Pull: %v, pulled %v, want nothing new", err, pulled)
			}
			if n := r.blobGets() - before; n != 0 {
				t.Errorf("second Pull fetched %d blobs", n)
			}
		})
	}
}

func validateImage(img v1.Image) error {
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
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	_, err = img.ConfigFile()
	return err
}

func validateIndex(ii v1.ImageIndex) error {
	m, err := ii.IndexManifest()
	if err != nil {
		return err
	}
	for _, d := range m.Manifests {
		img, err := ii.Image(d.Digest)
		if err != nil {
			return err
		}
		if err := validateImage(img); err != nil {
			return err
		}
	}
	return nil
}

// TestLayoutExisting adds to a layout already at the path, as crane and
// skopeo do: other names stay, the same name is replaced, a name the
// layout had before a Tag is kept, and a damaged blob is fetched again.
func TestLayoutExisting(t *testing.T) {
	r := newReg(t)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "layout")
	a, da := r.push(t, "acme/a:1", platformed(t, "linux", "amd64"))
	b1, db1 := r.push(t, "acme/b:1", platformed(t, "linux", "amd64"))

	l := NewLayout(path, Options{})
	for _, x := range []struct {
		ref    name.Reference
		digest string
	}{{a, da}, {b1, db1}} {
		if _, err := l.Pull(ctx, pinned(x.ref, x.digest), nil, registryauth.Anonymous, nil); err != nil {
			t.Fatal(err)
		}
		if err := l.Tag(ctx, pinned(x.ref, x.digest), x.ref.String()); err != nil {
			t.Fatal(err)
		}
	}
	// b:1 moves; a is also kept under its digest name from before.
	b2img := platformed(t, "linux", "amd64")
	b2, db2 := r.push(t, "acme/b:1", b2img)
	l = NewLayout(path, Options{})
	if _, err := l.Pull(ctx, pinned(a, da), nil, registryauth.Anonymous, nil); err != nil {
		t.Fatal(err)
	}
	// Damage one of b2's layers as if a copy had been cut short, after
	// putting it in place: the next Pull must fetch it again.
	layers, _ := b2img.Layers()
	ld, _ := layers[0].Digest()
	if _, err := l.Pull(ctx, pinned(b2, db2), nil, registryauth.Anonymous, nil); err != nil {
		t.Fatal(err)
	}
	blobFile := filepath.Join(path, "blobs", "sha256", ld.Hex)
	data, _ := os.ReadFile(blobFile)
	data[0] ^= 0xff
	if err := os.WriteFile(blobFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	l = NewLayout(path, Options{})
	if pulled, err := l.Pull(ctx, pinned(b2, db2), nil, registryauth.Anonymous, nil); err != nil || !pulled {
		t.Fatalf("Pull over a damaged blob: %v, pulled %v (want it fetched again)", err, pulled)
	}
	if err := l.Tag(ctx, pinned(b2, db2), b2.String()); err != nil {
		t.Fatal(err)
	}
	entries := layoutEntries(t, path)
	want := map[string]string{a.String(): da, pinned(a, da): da, b2.String(): db2, pinned(b2, db2): db2}
	if len(entries) != len(want) {
		t.Errorf("entries %v, want %v", entries, want)
	}
	for n, d := range want {
		if entries[n].Digest.String() != d {
			t.Errorf("entry %s = %s, want %s", n, entries[n].Digest, d)
		}
	}
	lp, _ := layout.FromPath(path)
	img, err := lp.Image(entries[b2.String()].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateImage(img); err != nil {
		t.Errorf("the damaged blob was kept: %v", err)
	}
	noTemps(t, filepath.Dir(path))
}

// TestFailedWritesLeaveNothing: a blob that arrives damaged fails the
// pull, and neither a new path nor an existing file or layout changes.
func TestFailedWritesLeaveNothing(t *testing.T) {
	r := newReg(t)
	ctx := context.Background()
	img := platformed(t, "linux", runtime.GOARCH)
	ref, digest := r.push(t, "acme/bad:1", img)
	layers, _ := img.Layers()
	ld, _ := layers[1].Digest()

	for _, tc := range []struct {
		name   string
		format Format
		before func(path string) // what is at the path beforehand
	}{
		{name: "new tar", format: Tarball},
		{name: "existing tar", format: Tarball, before: func(p string) { _ = os.WriteFile(p, []byte("old archive"), 0o644) }},
		{name: "new layout", format: Layout},
		{name: "existing layout", format: Layout, before: func(p string) {
			other, od := r.push(t, "acme/other:1", platformed(t, "linux", "amd64"))
			if _, err := NewLayout(p, Options{}).Pull(ctx, pinned(other, od), nil, registryauth.Anonymous, nil); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out")
			if tc.before != nil {
				tc.before(path)
			}
			snapshot := tree(t, path)
			r.mu.Lock()
			r.corrupt = ld.String()
			r.mu.Unlock()
			defer func() { r.mu.Lock(); r.corrupt = ""; r.mu.Unlock() }()
			var d interface {
				Pull(context.Context, string, *ocispec.Platform, registryauth.Credentials, func(int64, int64)) (bool, error)
			}
			if tc.format == Tarball {
				d, _ = NewTar(path, ref.String(), Options{})
			} else {
				d = NewLayout(path, Options{})
			}
			if _, err := d.Pull(ctx, pinned(ref, digest), nil, registryauth.Anonymous, nil); err == nil {
				t.Fatal("a damaged blob was accepted")
			}
			if got := tree(t, path); got != snapshot {
				t.Errorf("the path changed after a failed write:\nbefore %s\nafter  %s", snapshot, got)
			}
			noTemps(t, dir)
		})
	}
}

// tree describes what is at path: names, sizes and contents.
func tree(t *testing.T, path string) string {
	t.Helper()
	var b strings.Builder
	_ = filepath.Walk(path, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		b.WriteString(strings.TrimPrefix(p, path) + " ")
		if !fi.IsDir() {
			data, _ := os.ReadFile(p)
			b.Write(data)
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// TestCredentials: with the probe's registry token only the token is sent
// (never the password), and a refusal is failure.Rejected, so that pull's
// fallback applies exactly as for a daemon.
func TestCredentials(t *testing.T) {
	r := newReg(t)
	ctx := context.Background()
	ref, digest := r.push(t, "acme/priv:1", platformed(t, "linux", "amd64"))
	r.bearer = "scoped-token"
	const password = "canary-password-123"
	cases := []struct {
		name     string
		creds    registryauth.Credentials
		rejected bool
	}{
		{name: "registry token", creds: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: password, RegistryToken: "scoped-token"}},
		{name: "password refused at the token endpoint", creds: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: password}, rejected: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, f := range []Format{Layout, Tarball} {
				path := filepath.Join(t.TempDir(), "out")
				var err error
				if f == Tarball {
					tf, _ := NewTar(path, ref.String(), Options{})
					_, err = tf.Pull(ctx, pinned(ref, digest), nil, tc.creds, nil)
				} else {
					_, err = NewLayout(path, Options{}).Pull(ctx, pinned(ref, digest), nil, tc.creds, nil)
				}
				var rej *failure.Rejected
				if tc.rejected != errors.As(err, &rej) || (!tc.rejected && err != nil) {
					t.Errorf("%s: %v (%T), want rejected %v", f, err, err, tc.rejected)
				}
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, q := range r.log {
				if _, _, ok := q.BasicAuth(); ok && !tc.rejected {
					t.Errorf("Basic credentials sent to %s although a registry token was given", q.URL.Path)
				}
			}
			r.log = nil
		})
	}
}

func TestResolvePath(t *testing.T) {
	ws := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(ws, "empty"), 0o755))
	must(os.MkdirAll(filepath.Join(ws, "full"), 0o755))
	must(os.WriteFile(filepath.Join(ws, "full", "x"), nil, 0o644))
	must(os.WriteFile(filepath.Join(ws, "file.tar"), nil, 0o644))
	if _, err := layout.Write(filepath.Join(ws, "layout"), empty.Index); err != nil {
		t.Fatal(err)
	}
	must(os.Symlink(outside, filepath.Join(ws, "escape")))

	cases := []struct {
		name    string
		format  Format
		raw     string
		bounded bool
		want    string // "" with wantBad
		wantBad string // a word the error must carry
	}{
		{"relative resolves in the workspace", Tarball, "images/app.tar", true, filepath.Join(ws, "images/app.tar"), ""},
		{"absolute inside", Tarball, filepath.Join(ws, "a.tar"), true, filepath.Join(ws, "a.tar"), ""},
		{"absolute outside", Tarball, "/tmp/app.tar", true, "", "outside"},
		{"climbing out", Layout, "../layout", true, "", "outside"},
		{"through a symlink out", Tarball, "escape/app.tar", true, "", "outside"},
		{"the workspace itself", Layout, ".", true, "", "workspace itself"},
		{"command line: anywhere", Tarball, filepath.Join(outside, "a.tar"), false, filepath.Join(outside, "a.tar"), ""},
		{"tar onto a directory", Tarball, "empty", true, "", "is a directory"},
		{"tar over a file", Tarball, "file.tar", true, filepath.Join(ws, "file.tar"), ""},
		{"layout onto a file", Layout, "file.tar", true, "", "is a file"},
		{"layout into a full directory", Layout, "full", true, "", "not an OCI layout"},
		{"layout into an empty directory", Layout, "empty", true, filepath.Join(ws, "empty"), ""},
		{"layout into a layout", Layout, "layout", true, filepath.Join(ws, "layout"), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolvePath(tc.format, tc.raw, ws, tc.bounded)
			if tc.wantBad == "" {
				if err != nil || got != tc.want {
					t.Errorf("got %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != "Path" || bad.Fix == "" || !strings.Contains(err.Error(), tc.wantBad) {
				t.Errorf("error %v, want a bad path input saying %q with a fix", err, tc.wantBad)
			}
		})
	}
}

// TestMirrorSource: pull may hand a target a mirror's reference; Inspect
// then names the digest in the mirror's repository too, which is what
// pull checks for a mirrored pull.
func TestMirrorSource(t *testing.T) {
	upstream, mirror := newReg(t), newReg(t)
	ctx := context.Background()
	img := platformed(t, "linux", runtime.GOARCH)
	ref, digest := upstream.push(t, "acme/m:1", img)
	mref, _ := mirror.push(t, "acme/m:1", img)
	for _, f := range []Format{Layout, Tarball} {
		path := filepath.Join(t.TempDir(), "out")
		var d interface {
			Pull(context.Context, string, *ocispec.Platform, registryauth.Credentials, func(int64, int64)) (bool, error)
			Tag(context.Context, string, string) error
			Inspect(context.Context, string) (image.Info, error)
		}
		if f == Tarball {
			d, _ = NewTar(path, ref.String(), Options{})
		} else {
			d = NewLayout(path, Options{})
		}
		from := pinned(mref, digest)
		if _, err := d.Pull(ctx, from, nil, registryauth.Anonymous, nil); err != nil {
			t.Fatal(err)
		}
		if err := d.Tag(ctx, from, ref.String()); err != nil {
			t.Fatal(err)
		}
		info, err := d.Inspect(ctx, ref.String())
		if err != nil {
			t.Fatal(err)
		}
		if info.Digest(from, "") != digest || info.Digest(pinned(ref, digest), "") != digest {
			t.Errorf("%s: RepoDigests %v, want %s and %s", f, info.RepoDigests, from, pinned(ref, digest))
		}
	}
}
