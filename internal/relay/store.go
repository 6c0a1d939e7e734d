package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
//   - a blob found there is checked the first time the step needs it: its
//     size at once (a truncated restore is removed and fetched upstream
//     before anything is served), its digest while it is served (adopt,
//     verify): a runtime gets each byte once it has been hashed and the
//     last one only after the digest matched, so a flipped byte costs a
//     cut response and the runtime's retry, which fetches the blob
//     upstream; a damaged blob is removed and never served whole;
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

// stored reports whether the store holds a file for blob dgst (not
// checked: adopt does that when a host asks).
func (s *Server) stored(dgst string) bool {
	if s.opts.Store == "" {
		return false
	}
	_, err := os.Stat(s.blobPath(dgst))
	return err == nil
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

// adopt enters blob dgst in the cache from the store when it is there;
// called with s.mu held, by openBlob and readAhead when the cache lacks
// the blob. A file whose size is not the manifest's (a truncated restore,
// the common damage) is removed at once, and the caller fetches the blob
// upstream: nil, nil. One of the right size is served while verify checks
// its digest: readers follow the hash as they follow an upstream fetch,
// and never get the last byte before it matched. Reading the whole blob
// first would put that pass on the runtime's critical path.
func (s *Server) adopt(dgst string, size int64) (*blob, error) {
	if s.opts.Store == "" {
		return nil, nil
	}
	p := s.blobPath(dgst)
	fi, err := os.Stat(p)
	if err != nil {
		return nil, nil
	}
	h, herr := v1.NewHash(dgst)
	if herr != nil || h.Algorithm != "sha256" || !fi.Mode().IsRegular() || fi.Size() != size {
		s.discard(dgst, p)
		return nil, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, nil
	}
	if err := s.reserve(dgst, size); err != nil {
		f.Close()
		return nil, err
	}
	b := &blob{path: p, size: size, started: true, cond: sync.NewCond(&s.mu)}
	s.blobs[dgst] = b
	go s.verify(b, f, h.Hex)
	return b, nil
}

// errDamaged: a blob taken from the store did not match its digest (or
// could not be read whole). Its readers' responses are cut; it is no
// upstream failure of the image.
var errDamaged = errors.New("relay: a blob in the cache is damaged")

// verifyChunk is how many bytes verify hashes between telling readers.
const verifyChunk = 1 << 20

// verify hashes blob b read from the store (f), making the bytes hashed
// so far (written) readable, and marks it done when the digest matches. A
// mismatch or a short read: the blob leaves the cache and the store, and
// its readers' responses are cut (the runtime retries, and the retry
// fetches it upstream). It stops when the server closes, leaving the file
// for the next step to verify.
func (s *Server) verify(b *blob, f *os.File, hx string) {
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, verifyChunk)
	var n int64
	var err error
	for n < b.size && err == nil {
		var k int
		k, err = io.ReadFull(f, buf[:min(int64(len(buf)), b.size-n)])
		h.Write(buf[:k])
		n += int64(k)
		s.mu.Lock()
		b.written = n
		b.cond.Broadcast()
		s.mu.Unlock()
		if s.paced != nil {
			s.paced(n)
		}
		if err == nil {
			err = s.ctx.Err()
		}
	}
	dgst := "sha256:" + hx
	s.mu.Lock()
	defer s.mu.Unlock()
	defer b.cond.Broadcast()
	switch {
	case err == nil && s.closed:
		err = errors.New("relay: closed")
	case err == nil && hex.EncodeToString(h.Sum(nil)) != hx:
		err = errDamaged
	case err == nil:
		b.done = true
		s.reused[dgst]++
		return
	}
	s.drop(dgst, b)
	if s.closed || errors.Is(err, context.Canceled) {
		b.err = errors.New("relay: closed")
		return
	}
	b.err = fmt.Errorf("%w: %s does not match its digest; removed, fetched again when asked for", errDamaged, dgst)
	if !errors.Is(err, errDamaged) {
		b.err = fmt.Errorf("%w: %s cannot be read whole (%v); removed, fetched again when asked for", errDamaged, dgst, err)
	}
	s.discard(dgst, b.path)
}

// discard removes a damaged blob or manifest from the store and counts
// it; called with s.mu held for a blob, so that no fetch of the same
// digest renames its file in between.
func (s *Server) discard(dgst, p string) {
	os.Remove(p)
	s.discarded[dgst]++
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
		s.mu.Lock()
		s.discard(dgst, p)
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
// missing ones fetched once, as for a runtime's request; it waits for the
// blobs being fetched or verified, and fetches a blob again once when its
// copy in the store turned out damaged. Without a store it does nothing.
func (s *Server) Complete(ctx context.Context) error {
	if s.opts.Store == "" {
		return nil
	}
	type want struct{ path, dgst string }
	var todo []want
	s.mu.Lock()
	for path, r := range s.repos {
		for d := range r.sizes {
			if b, ok := s.blobs[d]; !ok || !b.done {
				todo = append(todo, want{path, d})
			}
		}
	}
	s.mu.Unlock()
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, w := range todo {
		g.Go(func() error {
			err := s.readWhole(ctx, w.path, w.dgst)
			if errors.Is(err, errDamaged) {
				// The damaged copy has left the cache: this fetches it.
				err = s.readWhole(ctx, w.path, w.dgst)
			}
			return err
		})
	}
	return g.Wait()
}

// readWhole reads blob dgst to the end: its fetch or verification is then
// complete and checked.
func (s *Server) readWhole(ctx context.Context, path, dgst string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rd, err := s.openBlob(ctx, path, dgst)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rd)
	return errors.Join(err, rd.Close())
}
