// Package relay is the runner's side of ssh-transfer: relay. It is a
// read-only OCI distribution server for the images of one step: it fetches
// each manifest and blob from the registry once, with the credentials the
// probe settled on, keeps blobs in a bounded on-disk cache that is removed
// when the step ends, and serves them, without any authentication, to the
// hosts' runtimes through SSH remote forwards on their loopback. A host's
// runtime asks only for what it lacks, so its own deduplication decides
// what travels. The server serves only repositories and digests it was
// told to relay (Allow), by digest, and refuses everything else.
//
// It knows nothing about SSH: a host is a name given to Handler, used to
// count what that host was sent.
package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/singleflight"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// DefaultMaxBytes bounds the blob cache when Options.MaxBytes is zero.
const DefaultMaxBytes = 20 << 30

// Options configure a Server.
type Options struct {
	// Dir is where the cache directory is made ("" is os.TempDir()).
	Dir string
	// Store, when set, is a persistent OCI image layout that holds the
	// blobs and manifests instead of a temporary directory (cache-path):
	// blobs found there are verified as they are first served, and Close
	// prunes it to what the step relayed instead of removing it (store.go).
	Store string
	// MaxBytes bounds the blobs kept on disk at once.
	MaxBytes int64
	// Transport reaches the registry (ghcr.Transport: plain HTTP refused
	// off loopback, tokens masked as they arrive).
	Transport http.RoundTripper
	UserAgent string
}

// Server relays the images it was told about. Its methods may be called
// from several goroutines.
type Server struct {
	opts Options
	dir  string
	sf   singleflight.Group
	// ctx bounds upstream fetches: a blob one host asked for is fetched
	// for all of them, so a host that goes away does not cancel it.
	ctx    context.Context
	cancel context.CancelFunc

	mu         sync.Mutex
	repos      map[string]*repo // by the path served, the upstream repository path
	blobs      map[string]*blob // by digest, across repositories
	used       int64
	tick       int64
	closed     bool
	fetches    map[string]int // upstream blob fetches by digest
	upBytes    int64
	served     map[[2]string]int64 // bytes sent by host and path
	asked      map[asked]bool      // blobs a host asked for (GET), for NewImage
	manifest   map[string]int      // upstream manifest fetches by digest
	readAheads int                 // blob fetches started by readAhead
	// With a store: blobs taken from it intact, blobs and manifests found
	// damaged there, and the index.json names (ref → path, digest).
	reused    map[string]int
	discarded map[string]int
	names     map[string][2]string
	// warming: warm's requests; Close waits for them.
	warming sync.WaitGroup
	// paced, when set (tests), is called by verify with the bytes hashed
	// so far once readers may have them, outside s.mu.
	paced func(hashed int64)
}

// asked is a blob (digest) of path that host asked for.
type asked struct{ host, path, dgst string }

type repo struct {
	upstream name.Repository
	creds    registryauth.Credentials
	// tr reaches upstream with creds: the registry's ping and token
	// exchange happen once per repository and credentials, not before each
	// manifest and blob (ggcr's remote does them per call, 2 round trips
	// on each blob's critical path). gen counts credential changes.
	tr  http.RoundTripper
	gen int
	// manifests fetched, by digest; allowed lists the digests that may
	// be asked for (the relayed digest and, for an index, its entries).
	manifests map[string]manifest
	allowed   map[string]bool
	// sizes of the blobs the fetched manifests name; only these are served.
	sizes map[string]int64
	// after lists, for each layer, the layers that follow it in its
	// image's manifest: what a host asking for that layer will ask for next
	// (readAhead).
	after map[string][]string
	// err is the last upstream failure while serving a host.
	err error
	// warmed: images (by config digest) whose connections warm opened.
	warmed map[string]bool
}

type manifest struct {
	body      []byte
	mediaType types.MediaType
}

// blob is a cache entry, complete (done) or being written by its one
// upstream fetch or, taken from the store, being verified (written: bytes
// written or hashed so far; cond, on s.mu, tells readers of progress, the
// end and a failure, err). A failed blob leaves the cache.
type blob struct {
	path    string
	size    int64
	readers int
	lastUse int64

	started bool // the registry answered; bytes follow
	written int64
	done    bool
	err     error
	cond    *sync.Cond
}

// New makes the cache directory.
func New(opts Options) (*Server, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Transport == nil {
		opts.Transport = remote.DefaultTransport
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "ghcr-pull"
	}
	var dir string
	var err error
	if opts.Store != "" {
		dir, err = openStore(opts.Store)
	} else {
		dir, err = os.MkdirTemp(opts.Dir, "ghcr-pull-relay-")
	}
	if err != nil {
		return nil, fmt.Errorf("relay: making the blob cache: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{opts: opts, dir: dir, ctx: ctx, cancel: cancel, repos: map[string]*repo{}, blobs: map[string]*blob{},
		fetches: map[string]int{}, served: map[[2]string]int64{}, asked: map[asked]bool{}, manifest: map[string]int{},
		reused: map[string]int{}, discarded: map[string]int{}, names: map[string][2]string{}}, nil
}

// Dir is the cache directory (removed by Close), or with a store the
// store's blob directory (kept).
func (s *Server) Dir() string { return s.dir }

// Close removes the cache, or prunes the store and writes its index.json;
// the server refuses every request afterwards.
func (s *Server) Close() error {
	s.cancel()
	s.mu.Lock()
	s.closed = true
	s.blobs, s.used = map[string]*blob{}, 0
	s.mu.Unlock()
	s.warming.Wait()
	if s.opts.Store != "" {
		return s.closeStore()
	}
	return os.RemoveAll(s.dir)
}

// Allow makes the server relay ref (a digest) with creds, and fetches its
// manifest now, so that a refusal reaches the caller classified
// (failure.Rejected, NotFound, Transient) rather than as a host runtime's
// words. It returns the repository path hosts pull under:
// <forward address>/<path>@<digest>.
func (s *Server) Allow(ctx context.Context, ref name.Digest, creds registryauth.Credentials) (string, error) {
	path := ref.Context().RepositoryStr()
	s.mu.Lock()
	r, ok := s.repos[path]
	switch {
	case s.closed:
		s.mu.Unlock()
		return "", errors.New("relay: closed")
	case !ok:
		r = &repo{upstream: ref.Context(), manifests: map[string]manifest{}, allowed: map[string]bool{}, sizes: map[string]int64{}, after: map[string][]string{}, warmed: map[string]bool{}}
		s.repos[path] = r
	case r.upstream.RegistryStr() != ref.Context().RegistryStr():
		s.mu.Unlock()
		return "", fmt.Errorf("relay: %s and %s share the path %s; relay them in separate steps", r.upstream, ref.Context(), path)
	}
	if r.creds != creds {
		r.creds, r.tr = creds, nil
		r.gen++
	}
	r.allowed[ref.DigestStr()] = true
	r.err = nil
	s.mu.Unlock()
	m, err := s.manifestOf(ctx, path, ref.DigestStr())
	if err != nil {
		return "", err
	}
	s.warm(path, r, m)
	return path, nil
}

// warmConns is how many connections to the registry warm opens: a
// runtime asks for a fresh image's config and layers three at a time
// (dockerd's and containerd's default), four requests at once.
const warmConns = 4

// warm opens connections to the registry, while the hosts are still being
// reached, for the first warmConns blobs of image m that the cache lacks:
// a HEAD of each, at once, leaves its connection idle in the transport's
// pool (and, where a registry redirects blobs to a CDN, the CDN's). The
// hosts' first GETs then skip the TCP and TLS handshakes: a round trip or
// more each over a wide-area link, on every fresh host's path, where the
// transport would otherwise dial one connection per blob fetched at once
// (HTTP/1.1). Nothing is fetched, and a failure costs nothing: the GET
// meets it and is classified as ever. Once per image; never for an index
// (the hosts' platform picks the entry).
func (s *Server) warm(path string, r *repo, m manifest) {
	if m.mediaType.IsIndex() {
		return
	}
	im, err := v1.ParseManifest(bytes.NewReader(m.body))
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || r.warmed[im.Config.Digest.String()] {
		return
	}
	r.warmed[im.Config.Digest.String()] = true
	var blobs []string
	for _, d := range append([]v1.Descriptor{im.Config}, im.Layers...) {
		if len(blobs) == warmConns {
			break
		}
		if _, cached := s.blobs[d.Digest.String()]; cached || s.stored(d.Digest.String()) {
			continue
		}
		blobs = append(blobs, d.Digest.String())
	}
	upstream := r.upstream
	for _, dgst := range blobs {
		s.warming.Go(func() {
			tr, _, err := s.transport(s.ctx, path)
			if err != nil {
				return
			}
			u := url.URL{Scheme: upstream.Scheme(), Host: upstream.RegistryStr(), Path: "/v2/" + upstream.RepositoryStr() + "/blobs/" + dgst}
			req, err := http.NewRequestWithContext(s.ctx, http.MethodHead, u.String(), nil)
			if err != nil {
				return
			}
			if resp, err := tr.RoundTrip(req); err == nil {
				resp.Body.Close()
			}
		})
	}
}

// Err is the last upstream failure met while serving path to a host, if
// any: a host's runtime reports it in its own words, the caller should
// report this one.
func (s *Server) Err(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.repos[path]; ok {
		return r.err
	}
	return nil
}

// NewImage reports the image relayed as dgst under path whose config
// host asked for, by its ID (the config's digest), if it asked for one
// since it was last reported. A runtime asks for an image's config only
// when it lacks the image (dockerd looks the config digest, the image ID,
// up in its store before fetching it; containerd its content store), so
// that image is new to the host, and its ID is known without asking the
// host. For an index, the entry the host chose is the one whose config
// it asked for. A request is reported once: a second image of the same
// config (another manifest of it, pulled later in the step) is not new.
func (s *Server) NewImage(host, path, dgst string) (id string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, found := s.repos[path]
	if !found {
		return "", false
	}
	m, found := r.manifests[dgst]
	if !found {
		return "", false
	}
	candidates := []manifest{m}
	if m.mediaType.IsIndex() {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(m.body))
		if err != nil {
			return "", false
		}
		candidates = candidates[:0]
		for _, d := range idx.Manifests {
			if cm, found := r.manifests[d.Digest.String()]; found {
				candidates = append(candidates, cm)
			}
		}
	}
	for _, cm := range candidates {
		if cm.mediaType.IsIndex() {
			continue
		}
		im, err := v1.ParseManifest(bytes.NewReader(cm.body))
		if err != nil {
			continue
		}
		if cfg := im.Config.Digest.String(); s.asked[asked{host, path, cfg}] {
			delete(s.asked, asked{host, path, cfg})
			return cfg, true
		}
	}
	return "", false
}

// Served is how many bytes of path's manifests and blobs host was sent.
func (s *Server) Served(host, path string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served[[2]string{host, path}]
}

// Stats are the upstream side's figures.
type Stats struct {
	// BlobFetches counts upstream fetches by blob digest: one each, for
	// any number of hosts, unless the cache bound forced an eviction.
	BlobFetches map[string]int
	// ManifestFetches counts upstream manifest fetches by digest.
	ManifestFetches map[string]int
	// Bytes is the blob bytes fetched upstream.
	Bytes int64
	// With a store: blobs served from it (their digest verified), and
	// blobs or manifests found there damaged and discarded, by digest.
	Reused, Discarded map[string]int
	// ReadAheads counts the blob fetches started before any host asked
	// (readAhead), included in BlobFetches.
	ReadAheads int
}

// Stats reports what was fetched upstream so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{BlobFetches: maps.Clone(s.fetches), ManifestFetches: maps.Clone(s.manifest), Bytes: s.upBytes,
		Reused: maps.Clone(s.reused), Discarded: maps.Clone(s.discarded), ReadAheads: s.readAheads}
	return st
}

// remoteOptions reach upstream through tr (s.transport). As in the probe:
// no hidden retries (ggcr adds none to a transport.Wrapper); the pull
// policy retries in the open.
func (s *Server) remoteOptions(ctx context.Context, tr http.RoundTripper) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr)}
}

// transport returns path's authenticated upstream transport, made once
// per repository and credentials (the registry's ping and token exchange).
func (s *Server) transport(ctx context.Context, path string) (http.RoundTripper, registryauth.Credentials, error) {
	s.mu.Lock()
	r, ok := s.repos[path]
	if !ok {
		s.mu.Unlock()
		return nil, registryauth.Credentials{}, errNotRelayed
	}
	upstream, creds, tr, gen := r.upstream, r.creds, r.tr, r.gen
	s.mu.Unlock()
	if tr != nil {
		return tr, creds, nil
	}
	v, err, _ := s.sf.Do(fmt.Sprintf("transport %s %d", path, gen), func() (any, error) {
		tr, err := transport.NewWithContext(ctx, upstream.Registry, creds.Authenticator(),
			transport.NewUserAgent(s.opts.Transport, s.opts.UserAgent), []string{upstream.Scope(transport.PullScope)})
		if err != nil {
			return nil, failure.FromRegistry(err, creds.IsAnonymous())
		}
		s.mu.Lock()
		if r.gen == gen {
			r.tr = tr
		}
		s.mu.Unlock()
		return tr, nil
	})
	if err != nil {
		return nil, creds, err
	}
	return v.(http.RoundTripper), creds, nil
}

// manifestOf returns an allowed manifest, fetching it upstream once.
func (s *Server) manifestOf(ctx context.Context, path, dgst string) (manifest, error) {
	s.mu.Lock()
	r, ok := s.repos[path]
	if !ok || !r.allowed[dgst] {
		s.mu.Unlock()
		return manifest{}, errNotRelayed
	}
	if m, ok := r.manifests[dgst]; ok {
		s.mu.Unlock()
		return m, nil
	}
	upstream := r.upstream
	s.mu.Unlock()

	v, err, _ := s.sf.Do("manifest "+path+"@"+dgst, func() (any, error) {
		// With a store, a manifest kept by an earlier step is used as it
		// is (its digest checked): the probe has just resolved the digest
		// with these credentials.
		m, ok := s.storedManifest(dgst)
		if !ok {
			tr, creds, err := s.transport(ctx, path)
			if err != nil {
				return nil, err
			}
			s.mu.Lock()
			s.manifest[dgst]++
			s.mu.Unlock()
			desc, err := remote.Get(upstream.Digest(dgst), s.remoteOptions(ctx, tr)...)
			if err != nil {
				return nil, failure.FromRegistry(err, creds.IsAnonymous())
			}
			m = manifest{body: desc.Manifest, mediaType: desc.MediaType}
			s.storeManifest(dgst, m.body)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		r.manifests[dgst] = m
		switch {
		case m.mediaType.IsIndex():
			idx, err := v1.ParseIndexManifest(bytes.NewReader(m.body))
			if err != nil {
				return nil, fmt.Errorf("relay: %s@%s: %w", upstream, dgst, err)
			}
			for _, d := range idx.Manifests {
				r.allowed[d.Digest.String()] = true
			}
		default:
			im, err := v1.ParseManifest(bytes.NewReader(m.body))
			if err != nil {
				return nil, fmt.Errorf("relay: %s@%s: %w", upstream, dgst, err)
			}
			r.sizes[im.Config.Digest.String()] = im.Config.Size
			for i, l := range im.Layers {
				r.sizes[l.Digest.String()] = l.Size
				for _, next := range im.Layers[i+1:] {
					r.after[l.Digest.String()] = append(r.after[l.Digest.String()], next.Digest.String())
				}
			}
		}
		return m, nil
	})
	if err != nil {
		return manifest{}, err
	}
	return v.(manifest), nil
}

var errNotRelayed = errors.New("not relayed")

// CacheError: the cache bound cannot hold a blob beside those in use.
type CacheError struct {
	Digest      string
	Size, Bound int64
}

func (e *CacheError) Error() string {
	return fmt.Sprintf("relay: the blob cache (bound %d bytes) cannot hold %s (%d bytes) beside the blobs being sent; "+
		"raise relay-cache-max above the largest layer plus those sent at once (the runner's disk must hold it)", e.Bound, e.Digest, e.Size)
}

// Class names the failure for the results' error_class.
func (e *CacheError) Class() string { return "relay-cache" }

// openBlob returns a reader of an allowed blob, pinned (never evicted)
// until it is closed. The first host to ask starts the blob's one upstream
// fetch for the step (later hosts, and later images naming the blob, join
// it or read the cache): the fetch writes the cache file and every reader
// follows it as bytes arrive, so a host's runtime receives the first bytes
// while the runner is still fetching the rest, not after. openBlob returns
// once the registry has answered, so that its refusal is a clean answer to
// the host and kept for the caller (Err). With a store, a blob found there
// is served from it instead, checked as it goes (adopt).
func (s *Server) openBlob(ctx context.Context, path, dgst string) (*blobReader, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.repos[path]
	if !ok || s.closed {
		return nil, errNotRelayed
	}
	size, ok := r.sizes[dgst]
	if !ok {
		return nil, errNotRelayed
	}
	b, ok := s.blobs[dgst]
	if !ok {
		var err error
		if b, err = s.adopt(dgst, size); err == nil && b == nil {
			if b, err = s.startFetch(path, r, dgst, size); err == nil {
				if next := r.after[dgst]; len(next) > 0 {
					go s.readAhead(path, next)
				}
			}
		}
		if err != nil {
			r.err = err
			return nil, err
		}
	}
	b.readers++
	s.tick++
	b.lastUse = s.tick
	rd := &blobReader{s: s, b: b, ctx: ctx}
	rd.stop = context.AfterFunc(ctx, func() {
		s.mu.Lock()
		b.cond.Broadcast()
		s.mu.Unlock()
	})
	for !b.started && b.err == nil && ctx.Err() == nil {
		b.cond.Wait()
	}
	err := b.err
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		rd.f, err = os.Open(b.path)
	}
	if err != nil {
		rd.stop()
		b.readers--
		if b.err != nil {
			r.err = b.err
		}
		return nil, err
	}
	return rd, nil
}

// readAhead starts the upstream fetch of the layers that follow one a
// host has just asked for and the cache lacks. containerd asks for an
// image's layers one after another, each once the previous one has been
// served, so without it every layer would wait for its own round trip to
// the registry; dockerd asks for several at once and simply joins these
// fetches. A host asks only for the layers it lacks, and an image's
// missing layers are its top ones (an update adds layers on top of those
// the host holds), so what is read ahead is almost always what the host
// asks for next: the first missing layer triggers it, never the config,
// which a host asks for even on an update. It is speculation, so it never
// evicts anything: a layer that does not fit beside the cache's contents
// is left for the host to ask for.
func (s *Server) readAhead(path string, layers []string) {
	for _, dgst := range layers {
		s.mu.Lock()
		r, ok := s.repos[path]
		if s.closed || !ok {
			s.mu.Unlock()
			return
		}
		size := r.sizes[dgst]
		if _, cached := s.blobs[dgst]; !cached {
			b, err := s.adopt(dgst, size)
			if err != nil {
				s.mu.Unlock()
				return
			}
			if b == nil && s.used+size <= s.opts.MaxBytes {
				if _, err := s.startFetch(path, r, dgst, size); err == nil {
					s.readAheads++
				}
			}
		}
		s.mu.Unlock()
	}
}

// startFetch reserves room for a blob, enters it in the cache as being
// written and starts its upstream fetch; called with s.mu held.
func (s *Server) startFetch(path string, r *repo, dgst string, size int64) (*blob, error) {
	if err := s.reserve(dgst, size); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(s.dir, "partial-")
	if err != nil {
		s.used -= size
		return nil, err
	}
	b := &blob{path: f.Name(), size: size, cond: sync.NewCond(&s.mu)}
	s.blobs[dgst] = b
	s.fetches[dgst]++
	go s.fetch(b, f, path, r.upstream, dgst)
	return b, nil
}

// fetch writes one blob from upstream into its cache file, telling the
// readers as bytes arrive. The fetch belongs to the step, not to the host
// that asked first (s.ctx): a host that goes away does not cancel it. A
// blob that fails (upstream error, wrong size or digest) leaves the cache,
// and its readers' responses are cut.
func (s *Server) fetch(b *blob, f *os.File, path string, upstream name.Repository, dgst string) {
	err := s.copyUpstream(b, f, path, upstream, dgst)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer b.cond.Broadcast()
	if err == nil && s.closed {
		err = errors.New("relay: closed")
	}
	if err == nil {
		final := s.blobPath(dgst)
		if err = os.Rename(b.path, final); err == nil {
			b.path, b.done = final, true
			return
		}
	}
	b.err = err
	os.Remove(b.path)
	s.drop(dgst, b)
}

// drop takes blob b, which failed, out of the cache and its bound, unless
// another entry has taken dgst's place; called with s.mu held.
func (s *Server) drop(dgst string, b *blob) {
	if s.blobs[dgst] == b {
		delete(s.blobs, dgst)
		s.used -= b.size
	}
}

// copyUpstream copies the blob into f. ggcr's reader checks the digest at
// EOF, returning the last bytes with the error; readers are never given a
// blob's last byte before that check passed (blobReader).
func (s *Server) copyUpstream(b *blob, f *os.File, path string, upstream name.Repository, dgst string) error {
	tr, creds, err := s.transport(s.ctx, path)
	if err != nil {
		return err
	}
	l, err := remote.Layer(upstream.Digest(dgst), s.remoteOptions(s.ctx, tr)...)
	if err != nil {
		return failure.FromRegistry(err, creds.IsAnonymous())
	}
	rc, err := l.Compressed()
	if err != nil {
		return failure.FromRegistry(err, creds.IsAnonymous())
	}
	defer rc.Close()
	s.mu.Lock()
	b.started = true
	b.cond.Broadcast()
	s.mu.Unlock()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, rerr := rc.Read(buf)
		if n+int64(k) > b.size {
			return fmt.Errorf("relay: %s is larger than the %d bytes the manifest says", dgst, b.size)
		}
		if k > 0 {
			if _, err := f.Write(buf[:k]); err != nil {
				return err
			}
			n += int64(k)
			s.mu.Lock()
			b.written = n
			s.upBytes += int64(k)
			b.cond.Broadcast()
			s.mu.Unlock()
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return failure.FromRegistry(rerr, creds.IsAnonymous())
		}
	}
	if n != b.size {
		return fmt.Errorf("relay: %s is %d bytes, the manifest says %d", dgst, n, b.size)
	}
	return nil
}

// blobReader reads a cached blob, following its fetch while it is being
// written (or its verification, for one taken from the store): a read
// waits for bytes not written (hashed) yet, and the last byte waits for
// the fetch (verification) to finish, checked. It seeks (Range requests)
// within the size the manifest gives.
type blobReader struct {
	s    *Server
	b    *blob
	f    *os.File
	ctx  context.Context
	stop func() bool
	off  int64
	// flush, when set, sends what the response buffers; called when the
	// reader catches up with the fetch after reading (unflushed).
	flush     func()
	unflushed bool
	// err is the fetch's failure met while reading: the response must be
	// cut, not ended as if the blob were whole.
	err  error
	once sync.Once
}

func (rd *blobReader) Read(p []byte) (int, error) {
	s, b := rd.s, rd.b
	s.mu.Lock()
	var limit int64
	for {
		if b.err != nil {
			rd.err = b.err
			s.mu.Unlock()
			return 0, rd.err
		}
		if err := rd.ctx.Err(); err != nil {
			s.mu.Unlock()
			return 0, err
		}
		if b.done {
			limit = b.size
			break
		}
		if limit = min(b.written, b.size-1); rd.off < limit {
			break
		}
		if rd.flush != nil && rd.unflushed {
			// Caught up with the fetch: what the response holds goes to
			// the host now, not when its buffer fills.
			rd.unflushed = false
			s.mu.Unlock()
			rd.flush()
			s.mu.Lock()
			continue
		}
		b.cond.Wait()
	}
	s.mu.Unlock()
	if rd.off >= limit {
		return 0, io.EOF
	}
	if int64(len(p)) > limit-rd.off {
		p = p[:limit-rd.off]
	}
	n, err := rd.f.ReadAt(p, rd.off)
	rd.off += int64(n)
	rd.unflushed = rd.unflushed || n > 0
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}

func (rd *blobReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += rd.off
	case io.SeekEnd:
		offset += rd.b.size
	}
	if offset < 0 {
		return 0, errors.New("relay: seek before the start of the blob")
	}
	rd.off = offset
	return offset, nil
}

// Close unpins the blob.
func (rd *blobReader) Close() error {
	rd.once.Do(func() {
		rd.stop()
		rd.f.Close()
		rd.s.mu.Lock()
		rd.b.readers--
		rd.s.mu.Unlock()
	})
	return nil
}

// reserve makes room for size bytes, evicting the least recently used
// complete blobs nobody is reading (never one being written); called with
// s.mu held.
func (s *Server) reserve(dgst string, size int64) error {
	for s.used+size > s.opts.MaxBytes {
		var victim string
		for d, b := range s.blobs {
			if b.done && b.readers == 0 && (victim == "" || b.lastUse < s.blobs[victim].lastUse) {
				victim = d
			}
		}
		if victim == "" {
			return &CacheError{Digest: dgst, Size: size, Bound: s.opts.MaxBytes}
		}
		os.Remove(s.blobs[victim].path)
		s.used -= s.blobs[victim].size
		delete(s.blobs, victim)
	}
	s.used += size
	return nil
}
