package imagefile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// TarFile writes one image as a `docker load` archive. It holds one image,
// of one platform, named by the user's reference (its RepoTags), so that
// `docker load` and `kind load image-archive` name the image.
type TarFile struct {
	path  string
	input string // the image as the user wrote it
	opts  Options

	mu      sync.Mutex
	written *image.Info
}

// NewTar writes the image input (the user's reference) to path.
func NewTar(path, input string, opts Options) (*TarFile, error) {
	if _, err := fullName(input); err != nil {
		return nil, err
	}
	return &TarFile{path: path, input: input, opts: opts.withDefaults()}, nil
}

// Runtime names the target in the results.
func (t *TarFile) Runtime() (name, namespace string) { return string(Tarball), "" }

// Pull writes ref (pull passes the probed digest) to the archive: into a
// temporary file beside the path, renamed over it once complete. An index
// is narrowed to platform, else to DefaultPlatform.
func (t *TarFile) Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return false, err
	}
	want := DefaultPlatform()
	if platform != nil {
		want = *platform
	}
	desc, err := fetch(ctx, r, creds, t.opts)
	if err != nil {
		return false, err
	}
	var img v1.Image
	if desc.MediaType.IsIndex() {
		ii, err := desc.ImageIndex()
		if err != nil {
			return false, failure.FromRegistry(err, creds.IsAnonymous())
		}
		if img, _, err = platformImage(ii, r, want); err != nil {
			return false, failure.FromRegistry(err, creds.IsAnonymous())
		}
	} else if img, err = desc.Image(); err != nil {
		return false, failure.FromRegistry(err, creds.IsAnonymous())
	}
	plat, err := platformOf(img)
	if err != nil {
		return false, failure.FromRegistry(err, creds.IsAnonymous())
	}
	id, err := img.ConfigName()
	if err != nil {
		return false, err
	}
	if err := t.write(ctx, img, progress); err != nil {
		return false, failure.FromRegistry(err, creds.IsAnonymous())
	}
	t.mu.Lock()
	t.written = &image.Info{ID: id.String(), RepoDigests: repoDigests(digest.Digest(desc.Digest.String()), t.input, ref), Platform: plat}
	t.mu.Unlock()
	return true, nil
}

// archiveName is what RepoTags says: the user's tag (also from
// repo:tag@digest); a reference by digest alone leaves the image
// untagged, as docker save does.
func (t *TarFile) archiveName() (name.Reference, error) {
	n, err := reference.ParseNormalizedNamed(t.input)
	if err != nil {
		return nil, err
	}
	if tagged, ok := n.(reference.NamedTagged); ok {
		return name.NewTag(reference.FamiliarName(n) + ":" + tagged.Tag())
	}
	return name.ParseReference(t.input)
}

func (t *TarFile) write(ctx context.Context, img v1.Image, progress func(done, total int64)) error {
	ref, err := t.archiveName()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(t.path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(t.path), tempPrefix(t.path))
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename, nothing is there
	// tarball.Write closes updates on success only; every send happens
	// before it returns, so stop, not the channel, ends the reader.
	updates := make(chan v1.Update, 16)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case u, ok := <-updates:
				if !ok {
					return
				}
				if progress != nil && u.Error == nil {
					progress(u.Complete, u.Total)
				}
			case <-stop:
				return
			}
		}
	}()
	err = tarball.Write(ref, img, ctxWriter{ctx, f}, tarball.WithProgress(updates))
	close(stop)
	<-done
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = publish(f.Name(), false)
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), t.path)
}

// ctxWriter stops a write once ctx is done: tarball.Write has no context,
// and a layer read from a slow registry still ends with the step's
// timeout.
type ctxWriter struct {
	ctx context.Context
	f   *os.File
}

func (w ctxWriter) Write(p []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	return w.f.Write(p)
}

// Tag accepts only the archive's own name, written with the image.
func (t *TarFile) Tag(ctx context.Context, source, target string) error {
	want, _ := fullName(t.input)
	if got, err := fullName(target); err != nil || got != want {
		return fmt.Errorf("%s holds %s, not %s", t.path, t.input, target)
	}
	return nil
}

// Inspect reports the image written, once the archive is at the path.
func (t *TarFile) Inspect(ctx context.Context, ref string) (image.Info, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.written == nil {
		return image.Info{}, errors.New("nothing was written to " + t.path)
	}
	if _, err := os.Stat(t.path); err != nil {
		return image.Info{}, err
	}
	return *t.written, nil
}
