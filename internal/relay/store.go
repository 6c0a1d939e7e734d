package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/ghcr-pull/ghcr-pull/internal/imagefile"
)

// Where the relay's blobs live. Without Options.Store, a temporary
// directory that Close removes. With it (cache-path), a persistent OCI
// image layout (oci-layout, index.json, blobs/<alg>/<hex>: what
// go-containerregistry's layout package writes) that the user saves and
// restores with actions/cache:
//   - a blob found there is checked against its digest and size the first
//     time the step needs it (imagefile.Intact); a damaged one (a truncated
//     restore, a flipped byte) is removed and fetched again, never served;
//   - manifests are kept there too, so a warm step asks the registry for
//     nothing beyond the probe;
//   - Close keeps only what the step relayed (the manifests asked for and
//     the blobs they name that are present), so the layout stays within
//     MaxBytes and holds no image the step no longer pulls, and writes
//     index.json naming the images given to Name.

// blobPath is where blob dgst lives: in the store's blobs/<alg>/<hex>, or
// in the temporary directory.
func (s *Server) blobPath(dgst string) string {
	if s.opts.Store == "" {
		return filepath.Join(s.dir, strings.ReplaceAll(dgst, ":", "-"))
	}
	alg, hx, _ := strings.Cut(dgst, ":")
	return filepath.Join(s.opts.Store, "blobs", alg, hx)
}

// openStore makes the store's blob directory (and the layout's marker, so
// that it is a layout even before the first Close).
func openStore(dir string) (string, error) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); errors.Is(err, os.ErrNotExist) {
		if err := imagefile.WriteIndex(dir, nil); err != nil {
			return "", err
		}
	}
	return blobs, nil
}

// adopt takes blob dgst of path from the store when it is there and
// intact, counting it against the bound, so that openBlob serves it as a
// complete cached blob; a damaged one is removed, and openBlob fetches it.
// The check reads the whole blob, so it runs outside s.mu, once per blob
// (singleflight).
func (s *Server) adopt(path, dgst string) error {
	if s.opts.Store == "" {
		return nil
	}
	s.mu.Lock()
	_, cached := s.blobs[dgst]
	r, ok := s.repos[path]
	var size int64
	if ok {
		size, ok = r.sizes[dgst]
	}
	s.mu.Unlock()
	if cached || !ok {
		return nil
	}
	_, err, _ := s.sf.Do("adopt "+dgst, func() (any, error) {
		p := s.blobPath(dgst)
		if _, err := os.Lstat(p); err != nil {
			return nil, nil
		}
		h, err := v1.NewHash(dgst)
		if err != nil || !imagefile.Intact(p, h, size) {
			os.Remove(p)
			s.mu.Lock()
			s.discarded[dgst]++
			s.mu.Unlock()
			return nil, nil
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.blobs[dgst]; ok || s.closed {
			return nil, nil
		}
		if err := s.reserve(dgst, size); err != nil {
			return nil, err
		}
		s.tick++
		s.blobs[dgst] = &blob{path: p, size: size, lastUse: s.tick, started: true, written: size, done: true, cond: sync.NewCond(&s.mu)}
		s.reused[dgst]++
		return nil, nil
	})
	return err
}

// storedManifest reads manifest dgst from the store when it is there and
// matches its digest; a damaged one is removed.
func (s *Server) storedManifest(dgst string) (manifest, bool) {
	if s.opts.Store == "" {
		return manifest{}, false
	}
	p := s.blobPath(dgst)
	body, err := os.ReadFile(p)
	if err != nil {
		return manifest{}, false
	}
	sum := sha256.Sum256(body)
	if "sha256:"+hex.EncodeToString(sum[:]) != dgst {
		os.Remove(p)
		s.mu.Lock()
		s.discarded[dgst]++
		s.mu.Unlock()
		return manifest{}, false
	}
	// A manifest names its media type; an OCI one may leave it out, and is
	// then an index when it lists manifests.
	var probe struct {
		MediaType types.MediaType   `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(body, &probe) != nil {
		return manifest{}, false
	}
	mt := probe.MediaType
	switch {
	case mt != "":
	case probe.Manifests != nil:
		mt = types.OCIImageIndex
	default:
		mt = types.OCIManifestSchema1
	}
	return manifest{body: body, mediaType: mt}, true
}

// storeManifest keeps a manifest fetched upstream in the store, written
// beside and renamed. Failing to keep it only costs a fetch next time.
func (s *Server) storeManifest(dgst string, body []byte) {
	if s.opts.Store == "" {
		return
	}
	p := s.blobPath(dgst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), "partial-")
	if err != nil {
		return
	}
	_, err = tmp.Write(body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
}

// Name records that index.json should name ref (the user's reference) as
// the image relayed as dgst from ref's repository; Close writes it.
// Without a store it does nothing.
func (s *Server) Name(ref name.Reference, dgst string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.Store == "" {
		return
	}
	s.names[ref.String()] = [2]string{ref.Context().RepositoryStr(), dgst}
}

// closeStore prunes the store to what the step relayed and writes its
// index.json. Called by Close with s.closed set, so nothing adds to it.
func (s *Server) closeStore() error {
	s.mu.Lock()
	keep := map[string]bool{}
	for _, r := range s.repos {
		for d := range r.manifests {
			keep[d] = true
		}
		for d := range r.sizes {
			keep[d] = true
		}
	}
	var entries []imagefile.Entry
	for ref, at := range s.names {
		r, ok := s.repos[at[0]]
		if !ok {
			continue
		}
		m, ok := r.manifests[at[1]]
		if !ok {
			continue
		}
		h, err := v1.NewHash(at[1])
		if err != nil {
			continue
		}
		entries = append(entries, imagefile.Entry{Ref: ref, Desc: v1.Descriptor{MediaType: m.mediaType, Size: int64(len(m.body)), Digest: h}})
	}
	s.mu.Unlock()

	algs, err := os.ReadDir(filepath.Join(s.opts.Store, "blobs"))
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range algs {
		dir := filepath.Join(s.opts.Store, "blobs", a.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range files {
			p := filepath.Join(dir, f.Name())
			if !keep[a.Name()+":"+f.Name()] {
				errs = append(errs, os.RemoveAll(p))
				continue
			}
			// The action's container writes as root; actions/cache saves
			// the layout as the runner's user.
			errs = append(errs, os.Chmod(p, 0o644))
		}
	}
	errs = append(errs, imagefile.WriteIndex(s.opts.Store, entries))
	return errors.Join(errs...)
}

// Complete makes the store hold every blob of the images relayed so far:
// a daemon asks only for the layers it lacks, and the next job's daemon
// (a fresh runner) may lack them all. Blobs already there are verified,
// missing ones fetched once, as for a runtime's request. Without a store
// it does nothing.
func (s *Server) Complete(ctx context.Context) error {
	if s.opts.Store == "" {
		return nil
	}
	type want struct{ path, dgst string }
	var todo []want
	s.mu.Lock()
	for path, r := range s.repos {
		for d := range r.sizes {
			if _, ok := s.blobs[d]; !ok {
				todo = append(todo, want{path, d})
			}
		}
	}
	s.mu.Unlock()
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, w := range todo {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			// Read to the end: the fetch is then complete and checked.
			rd, err := s.openBlob(ctx, w.path, w.dgst)
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, rd)
			return errors.Join(err, rd.Close())
		})
	}
	return g.Wait()
}
