package imagefile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// Annotations naming an image in index.json: the OCI one (crane's
// --annotate-ref writes the full reference there too) and containerd's,
// which `ctr import` and Docker's OCI loader read.
const (
	annotationRefName    = ocispec.AnnotationRefName
	annotationImageName  = "io.containerd.image.name"
	layerFetchesInFlight = 3
)

// LayoutDir writes images into an OCI image layout: a new one, or one that
// is already at the path, whose index.json gains (or, for a name it
// already has, replaces) one entry per image, as crane and skopeo do.
// Blobs are content-addressed and only ever added complete; index.json is
// swapped whole. Several images of one run go into the same layout.
type LayoutDir struct {
	path string
	opts Options

	mu      sync.Mutex // one index.json update at a time
	written map[string]entry
}

// entry is what this run put in index.json under one name.
type entry struct {
	desc      v1.Descriptor
	requested digest.Digest // the digest of the reference pulled (the index's for a narrowed image)
	pulledAs  string        // the reference pulled (a mirror's, when one served)
	platform  *ocispec.Platform
	// ours: the name was added by this run's Pull (not there before), so
	// a Tag that renames it takes it away again.
	ours bool
}

// NewLayout writes into the layout at path (made on first write).
func NewLayout(path string, opts Options) *LayoutDir {
	return &LayoutDir{path: path, opts: opts.withDefaults(), written: map[string]entry{}}
}

// Runtime names the target in the results.
func (l *LayoutDir) Runtime() (name, namespace string) { return string(Layout), "" }

// Pull writes ref (pull passes the probed digest) into the layout under
// ref's name: an index whole, or with platform only that platform's
// image. Blobs the layout already holds intact are not fetched; downloaded
// says whether any blob was.
func (l *LayoutDir) Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return false, err
	}
	key, err := fullName(ref)
	if err != nil {
		return false, err
	}
	desc, err := fetch(ctx, r, creds, l.opts)
	if err != nil {
		return false, err
	}
	top := desc.Descriptor
	top.Annotations, top.Platform = nil, nil
	var blobs []blob
	var plat *ocispec.Platform
	if desc.MediaType.IsIndex() {
		ii, err := desc.ImageIndex()
		if err != nil {
			return false, failure.FromRegistry(err, creds.IsAnonymous())
		}
		if platform != nil {
			img, d, err := platformImage(ii, r, *platform)
			if err != nil {
				return false, err
			}
			if blobs, err = imageBlobs(img); err != nil {
				return false, failure.FromRegistry(err, creds.IsAnonymous())
			}
			top = v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest, Platform: d.Platform}
			if plat, err = l.platformOf(img); err != nil {
				return false, failure.FromRegistry(err, creds.IsAnonymous())
			}
		} else if blobs, err = indexBlobs(ii); err != nil {
			return false, failure.FromRegistry(err, creds.IsAnonymous())
		}
	} else {
		img, err := desc.Image()
		if err != nil {
			return false, failure.FromRegistry(err, creds.IsAnonymous())
		}
		if blobs, err = imageBlobs(img); err != nil {
			return false, failure.FromRegistry(err, creds.IsAnonymous())
		}
		if plat, err = l.platformOf(img); err != nil {
			return false, failure.FromRegistry(err, creds.IsAnonymous())
		}
	}

	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return false, err
	}
	stage, err := os.MkdirTemp(filepath.Dir(l.path), tempPrefix(l.path))
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(stage) // renamed away or emptied on success
	staged, err := l.stage(ctx, stage, blobs, progress)
	if err != nil {
		return false, failure.FromRegistry(err, creds.IsAnonymous())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ours, err := l.commit(stage, staged, key, top)
	if err != nil {
		return false, err
	}
	l.written[key] = entry{desc: top, requested: digest.Digest(desc.Digest.String()), pulledAs: ref, platform: plat, ours: ours}
	return len(staged) > 0, nil
}

// blob is one content-addressed file an image needs.
type blob struct {
	digest v1.Hash
	size   int64
	open   func() (io.ReadCloser, error)
}

func bytesBlob(d v1.Hash, b []byte) blob {
	return blob{digest: d, size: int64(len(b)), open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func imageBlobs(img v1.Image) ([]blob, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var out []blob
	for _, ld := range m.Layers {
		layer, err := img.LayerByDigest(ld.Digest)
		if err != nil {
			return nil, err
		}
		out = append(out, blob{digest: ld.Digest, size: ld.Size, open: layer.Compressed})
	}
	// The config is fetched only when the layout lacks it.
	cfg := blob{digest: m.Config.Digest, size: m.Config.Size, open: func() (io.ReadCloser, error) {
		b, err := img.RawConfigFile()
		return io.NopCloser(bytes.NewReader(b)), err
	}}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	return append(out, cfg, bytesBlob(d, raw)), nil
}

// indexBlobs walks an index whole: every image and nested index, and
// anything else it names (attestations) as a plain blob.
func indexBlobs(ii v1.ImageIndex) ([]blob, error) {
	m, err := ii.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []blob
	for _, d := range m.Manifests {
		var bs []blob
		switch {
		case d.MediaType.IsIndex():
			child, err := ii.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			bs, err = indexBlobs(child)
			if err != nil {
				return nil, err
			}
		case d.MediaType.IsImage():
			img, err := ii.Image(d.Digest)
			if err != nil {
				return nil, err
			}
			if bs, err = imageBlobs(img); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("index entry %s has media type %s, which is neither an image nor an index", d.Digest, d.MediaType)
		}
		out = append(out, bs...)
	}
	raw, err := ii.RawManifest()
	if err != nil {
		return nil, err
	}
	d, err := ii.Digest()
	if err != nil {
		return nil, err
	}
	return append(out, bytesBlob(d, raw)), nil
}

// stage writes into stage (a layout of its own) every blob the layout at
// l.path lacks or holds damaged, each checked against its digest, and
// returns their digests.
func (l *LayoutDir) stage(ctx context.Context, stage string, blobs []blob, progress func(done, total int64)) ([]v1.Hash, error) {
	sp, err := layout.Write(stage, empty.Index)
	if err != nil {
		return nil, err
	}
	seen := map[v1.Hash]bool{}
	var need []blob
	var total int64
	for _, b := range blobs {
		if seen[b.digest] {
			continue
		}
		seen[b.digest] = true
		if Intact(l.blobPath(b.digest), b.digest, b.size) {
			continue
		}
		need = append(need, b)
		total += b.size
	}
	var done atomic.Int64
	report := func(n int64) {
		if progress != nil {
			progress(done.Add(n), total)
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(layerFetchesInFlight)
	for _, b := range need {
		g.Go(func() error {
			rc, err := b.open()
			if err != nil {
				return err
			}
			defer rc.Close()
			h := sha256.New()
			cr := &countingReader{ctx: ctx, r: io.TeeReader(rc, h), report: report}
			if err := sp.WriteBlob(b.digest, io.NopCloser(cr)); err != nil {
				return err
			}
			// go-containerregistry checks remote blobs as it reads them;
			// checking again here makes "the layout holds exactly the
			// digest" this package's guarantee, whatever the source.
			if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); b.digest.Algorithm != "sha256" || got != b.digest.String() || cr.n != b.size {
				return fmt.Errorf("blob %s: got %d bytes with digest %s, want %d bytes", b.digest, cr.n, got, b.size)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := make([]v1.Hash, 0, len(need))
	for _, b := range need {
		out = append(out, b.digest)
	}
	return out, nil
}

type countingReader struct {
	ctx    context.Context
	r      io.Reader
	n      int64
	report func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 {
		c.report(int64(n))
	}
	return n, err
}

// Intact says whether path holds exactly the blob d: a damaged blob (a
// killed copy, a bad disk) is fetched again, never kept. The relay's
// persistent store (cache-path) checks its blobs with it too.
func Intact(path string, d v1.Hash, size int64) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() != size || d.Algorithm != "sha256" {
		return false
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == d.Hex
}

// platformOf reads the image's config from the layout when it holds it
// intact, else from the registry.
func (l *LayoutDir) platformOf(img v1.Image) (*ocispec.Platform, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	p := l.blobPath(m.Config.Digest)
	if Intact(p, m.Config.Digest, m.Config.Size) {
		if f, err := os.Open(p); err == nil {
			defer f.Close()
			if cf, err := v1.ParseConfigFile(f); err == nil {
				return image.PlatformOf(cf.OS, cf.Architecture, cf.Variant), nil
			}
		}
	}
	return platformOf(img)
}

func (l *LayoutDir) blobPath(d v1.Hash) string {
	return filepath.Join(l.path, "blobs", d.Algorithm, d.Hex)
}

// commit puts the staged blobs and an index.json entry for key into the
// layout. A new layout is the stage renamed into place whole; an existing
// one gets the blobs first, then a new index.json. It reports whether key
// was new to the layout.
func (l *LayoutDir) commit(stage string, staged []v1.Hash, key string, top v1.Descriptor) (bool, error) {
	fresh := !isLayout(l.path)
	root := l.path
	if fresh {
		root = stage
	}
	idx, err := readIndex(root)
	if err != nil {
		return false, err
	}
	ours := setEntry(idx, key, top, "")
	raw, err := json.MarshalIndent(idx, "", "   ")
	if err != nil {
		return false, err
	}
	if fresh {
		if err := writeFileAtomic(filepath.Join(stage, "index.json"), raw); err != nil {
			return false, err
		}
		if err := publishTree(stage); err != nil {
			return false, err
		}
		// rename(2) replaces an empty directory, and ResolvePath let
		// only an empty one or none through.
		if err := os.Rename(stage, l.path); err != nil {
			return false, err
		}
		return ours, nil
	}
	for _, d := range staged {
		dst := l.blobPath(d)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return false, err
		}
		src := filepath.Join(stage, "blobs", d.Algorithm, d.Hex)
		if err := publish(src, false); err != nil {
			return false, err
		}
		if err := os.Rename(src, dst); err != nil {
			return false, err
		}
	}
	return ours, writeFileAtomic(filepath.Join(l.path, "index.json"), raw)
}

// publishTree makes a staged layout readable by the job's user.
func publishTree(root string) error {
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return publish(p, d.IsDir())
	})
}

func readIndex(root string) (*v1.IndexManifest, error) {
	f, err := os.Open(filepath.Join(root, "index.json"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	idx, err := v1.ParseIndexManifest(f)
	if err != nil {
		return nil, fmt.Errorf("%s: index.json: %w", root, err)
	}
	return idx, nil
}

// setEntry points key at desc: the entry of that name is replaced, or
// one is added (reported true). With drop set, the entry named drop goes.
func setEntry(idx *v1.IndexManifest, key string, desc v1.Descriptor, drop string) bool {
	desc.Annotations = map[string]string{annotationRefName: key, annotationImageName: key}
	added := true
	var kept []v1.Descriptor
	for _, d := range idx.Manifests {
		n := d.Annotations[annotationImageName]
		if n == "" {
			n = d.Annotations[annotationRefName]
		}
		switch {
		case n == key:
			added = false
			continue
		case drop != "" && n == drop:
			continue
		}
		kept = append(kept, d)
	}
	idx.Manifests = append(kept, desc)
	return added
}

// Tag names the image pulled as source target too; source's entry goes
// if this run's Pull added it (Docker's pull-by-digest leaves no digest
// name behind either).
func (l *LayoutDir) Tag(ctx context.Context, source, target string) error {
	src, err := fullName(source)
	if err != nil {
		return err
	}
	dst, err := fullName(target)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.written[src]
	if !ok {
		return fmt.Errorf("%s was not written to %s", source, l.path)
	}
	idx, err := readIndex(l.path)
	if err != nil {
		return err
	}
	drop := ""
	if e.ours {
		drop = src
	}
	setEntry(idx, dst, e.desc, drop)
	raw, err := json.MarshalIndent(idx, "", "   ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(l.path, "index.json"), raw); err != nil {
		return err
	}
	if e.ours {
		delete(l.written, src)
	}
	e.ours = false
	l.written[dst] = e
	return nil
}

// Inspect reports the image named ref as index.json holds it now.
func (l *LayoutDir) Inspect(ctx context.Context, ref string) (image.Info, error) {
	key, err := fullName(ref)
	if err != nil {
		return image.Info{}, err
	}
	l.mu.Lock()
	e, ok := l.written[key]
	l.mu.Unlock()
	if !ok {
		return image.Info{}, fmt.Errorf("%s was not written to %s", ref, l.path)
	}
	idx, err := readIndex(l.path)
	if err != nil {
		return image.Info{}, err
	}
	for _, d := range idx.Manifests {
		if d.Annotations[annotationImageName] == key && d.Digest == e.desc.Digest {
			return image.Info{ID: d.Digest.String(), RepoDigests: repoDigests(e.requested, ref, e.pulledAs), Platform: e.platform}, nil
		}
	}
	return image.Info{}, errors.New(l.path + "/index.json has no entry " + key + " at " + e.desc.Digest.String())
}
