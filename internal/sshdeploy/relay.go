package sshdeploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// Relay is a registry on the runner that a host's runtime pulls from
// through a remote forward on the host's loopback, in place of reaching
// the registry itself (ssh-transfer: relay). internal/relay's Server
// satisfies it; sshdeploy holds the connection, the relay the bytes.
type Relay interface {
	// Allow makes ref (repository@digest) available, fetched with creds,
	// and returns the repository path hosts pull it under. An upstream
	// refusal is classified as a direct pull's is (failure.Rejected,
	// NotFound, Transient), so the pull policy's fallback applies.
	Allow(ctx context.Context, ref name.Digest, creds registryauth.Credentials) (path string, err error)
	// Serve answers the runtime of host on l until l is closed.
	Serve(l net.Listener, host string) error
	// Err is the upstream failure met while serving path, if any: the
	// host's runtime reports it only in its own words.
	Err(path string) error
	// NewImage is the ID of the image relayed as dgst under path whose
	// config host asked for, if it asked: a runtime asks only for the
	// config of an image it lacks, so the image is new to the host.
	NewImage(host, path, dgst string) (id string, ok bool)
}

// forwardError: sshd refused the remote forward the relay needs.
type forwardError struct {
	Host string
	Err  error
}

// Class names the failure for the results' error_class.
func (e *forwardError) Class() string { return "ssh-forwarding-refused" }

func (e *forwardError) Error() string {
	return fmt.Sprintf("ssh %s: the remote forward for {Transfer}: relay was refused (%v); set AllowTcpForwarding yes (or remote) in the host's sshd_config, "+
		"or use {Transfer}: direct where the host reaches the registry", e.Host, e.Err)
}

func (e *forwardError) Unwrap() error { return e.Err }

// connectionLostError: the SSH connection to the host ended while the
// host's runtime was pulling through it. The runtime names only its end of
// the stream ("error reading from server: EOF"); the connection is what
// went away. Pull returns it inside a *failure.Transient: the host was up a
// moment ago.
type connectionLostError struct {
	Host string
	Err  error // what the runtime said
}

func (e *connectionLostError) Error() string {
	return fmt.Sprintf("ssh %s: the SSH connection to the host ended during the relayed pull (the host went away, or its sshd or network dropped the connection); the runtime said: %v", e.Host, e.Err)
}

func (e *connectionLostError) Unwrap() error { return e.Err }

// lostGrace is how long a failed pull waits to learn whether the
// connection ended: the runtime's stream can fail a moment before
// x/crypto's reader reports the connection closed.
const lostGrace = 2 * time.Second

// lost names err as the host's connection ending when it did end, and not
// by Close (a cancelled step closes it on purpose).
func (c *sshConn) lost(err error) error {
	select {
	case <-c.stop:
		return err
	case <-c.ended:
	case <-time.After(lostGrace):
		return err
	}
	select {
	case <-c.stop:
		return err
	default:
	}
	return &failure.Transient{Err: &connectionLostError{Host: c.host.String(), Err: err}}
}

// listenLoopback opens a remote forward on the host's 127.0.0.1 with a port
// sshd picks. OpenSSH answers "denied" for AllowTcpForwarding no or local,
// and x/crypto reports every refusal in these words, as an untyped error
// (ssh.Client.Listen): no daemon text, so not failure's phrase table's.
func (c *sshConn) listenLoopback() (net.Listener, error) {
	l, err := c.client.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		if strings.Contains(err.Error(), "tcpip-forward request denied") {
			return nil, &forwardError{Host: c.host.String(), Err: err}
		}
		return nil, fmt.Errorf("ssh %s: opening a remote forward: %w", c.host, err)
	}
	return l, nil
}

// dockerEngine is what the relayed route needs of a Docker Engine
// (*docker.Engine).
type dockerEngine interface {
	Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error)
	Tag(ctx context.Context, source, target string) error
	Inspect(ctx context.Context, ref string) (image.Info, error)
	Remove(ctx context.Context, ref string) error
	ConfigIDs(ctx context.Context) (bool, error)
	Runtime() (name, namespace string)
	Close() error
}

// relayedDocker is a Docker host that pulls from the relay: Pull(repo@digest)
// has the relay allow the digest, then the host's dockerd pulls
// 127.0.0.1:<port>/<path>@<digest> (127.0.0.0/8 is a plain-HTTP registry
// to dockerd by default) with no X-Registry-Auth, and the loopback name is
// replaced by a name in the user's repository.
//
// Docker's graphdriver store cannot hold <repository>@<digest> without a
// registry pull, and removing an image's last name deletes it, so the
// loopback name holds the image until another name does: Tag points the
// user's tag at it and then removes the loopback name; a digest input is
// named by the digest tag <repository>:sha256-<hex> when it is inspected
// (pull inspects every image it pulled), and Close names any image still
// held by its loopback name so, then removes that name, whatever happened
// before. Each name is one round trip to the host: a tag input gets one
// name, not a digest tag first. Inspect reports the relayed digest and the
// image ID as the reference that works on the host.
type relayedDocker struct {
	engine dockerEngine
	fwd    *forward
	once   pullOnce

	mu      sync.Mutex
	relayed map[string]*relayedImage // by the ref pulled: repository@digest
	pending []*relayedImage          // images pulled, for Close
	// aside: requests run beside the caller's (the loopback names Tag is
	// removing, the store's kind asked beside a pull); Close waits for
	// them, and none starts once it is closing.
	aside   sync.WaitGroup
	closing bool
	// configIDs: the host's image IDs are config digests (ConfigIDs),
	// known once storeKnown is closed.
	configIDs  bool
	storeKnown chan struct{}
	storeOnce  sync.Once
}

type relayedImage struct {
	name  reference.Canonical // the ref pulled (the user's repository, the digest relayed); nil if it is none
	id    string              // the image ID on the host
	hold  string              // the digest tag
	via   string              // the loopback name it was pulled by
	local string              // the loopback name while it holds the image, else ""
	named bool                // a name of ours (the user's tag, the digest tag) holds the image
}

func newRelayedDocker(e dockerEngine, fwd *forward) *relayedDocker {
	d := &relayedDocker{engine: e, fwd: fwd, relayed: map[string]*relayedImage{}, storeKnown: make(chan struct{})}
	// Once the host's daemon reaches the relay (its pull has the Engine
	// API client's one connection), the daemon is asked which image store
	// it keeps, which a new image's ID depends on. That request also
	// opens the client's second connection off the pull's path: the
	// naming after the pull runs two requests at once (Tag's removal of
	// the loopback name beside pull's Inspect), and a connection is an SSH
	// channel, a round trip to open.
	ask := func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.closing {
			return
		}
		d.aside.Go(func() {
			d.storeOnce.Do(func() {
				ok, err := e.ConfigIDs(context.Background())
				d.mu.Lock()
				d.configIDs = ok && err == nil
				d.mu.Unlock()
				close(d.storeKnown)
			})
		})
	}
	fwd.onConn.Store(&ask)
	return d
}

// LocalHost is the name the runner's own daemon is served under (the
// relay counts bytes by it), as results name it.
const LocalHost = "local"

// Local is the runner's own Docker daemon fed by the relay (cache-path):
// the route of a relayed Docker host, with listen in place of the SSH
// remote forward. listen opens the relay's listener where the daemon
// reaches it on its own 127.0.0.1, at the listener's port: a plain
// listener when the daemon shares our network namespace, else one a
// forwarder on the daemon's side relays to (the listener then reports the
// forwarder's port). Closing the runtime closes the listener and e.
func Local(e dockerEngine, r Relay, listen func() (net.Listener, error)) Runtime {
	return newRelayedDocker(e, newForward(r, localLoopback(listen)))
}

// loopback is where the relay's listener for a runtime opens, on the
// runtime's own 127.0.0.1 (127.0.0.0/8 is a plain-HTTP registry to dockerd
// and containerd with no configuration): an SSH remote forward on a host
// (*sshConn), or a listener the runner's daemon reaches (Local).
type loopback interface {
	listenLoopback() (net.Listener, error)
	// lost names a failed pull's error by what went away, if anything.
	lost(err error) error
	// name is the host the relay counts what it sends under.
	name() string
}

func (c *sshConn) name() string { return c.host.Addr() }

type localLoopback func() (net.Listener, error)

func (l localLoopback) listenLoopback() (net.Listener, error) { return l() }
func (l localLoopback) lost(err error) error                  { return err }
func (l localLoopback) name() string                          { return LocalHost }

// forward is the relay's listener for one runtime (a remote forward on one
// connection): opened at the first pull, one for every image of the step,
// closed with the runtime.
type forward struct {
	relay Relay
	conn  loopback
	host  string

	// onConn, when set, is called once the runtime first connects to the
	// relay: its pull is under way. Set after the forward may have opened
	// (Open opens it early).
	onConn atomic.Pointer[func()]

	once sync.Once
	l    net.Listener
	err  error
}

// firstAccept calls fn at its first accepted connection.
type firstAccept struct {
	net.Listener
	once sync.Once
	fn   func()
}

func (l *firstAccept) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.once.Do(l.fn)
	}
	return c, err
}

func newForward(r Relay, c loopback) *forward {
	return &forward{relay: r, conn: c, host: c.name()}
}

// port opens the remote forward once per connection, serves the relay on
// it, and returns the port sshd picked on the host's loopback.
func (f *forward) port() (int, error) {
	f.once.Do(func() {
		f.l, f.err = f.conn.listenLoopback()
		if f.err == nil {
			go f.relay.Serve(&firstAccept{Listener: f.l, fn: func() {
				if fn := f.onConn.Load(); fn != nil {
					(*fn)()
				}
			}}, f.host)
		}
	})
	if f.err != nil {
		return 0, f.err
	}
	return f.l.Addr().(*net.TCPAddr).Port, nil
}

// closeWith closes the forward while closing the runtime that ends the
// connection (closeRuntime): the listener is closed here at once, and
// sshd's answer to cancelling the forward (a round trip) is not waited
// for once the connection ends, which ends the forward on the host too.
func (f *forward) closeWith(closeRuntime func() error) error {
	closed := make(chan error, 1)
	go func() { closed <- f.close() }()
	err := closeRuntime()
	ferr := <-closed
	if errors.Is(ferr, io.EOF) {
		ferr = nil // the connection ended before sshd answered
	}
	return errors.Join(ferr, err)
}

// close closes the forward; no pull opens one afterwards.
func (f *forward) close() error {
	// Do makes the forward opened by a pull visible here, or closes the
	// door on one opening later.
	f.once.Do(func() { f.err = net.ErrClosed })
	if f.l != nil {
		if err := f.l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	return nil
}

// pullOnce makes one relayed pull per reference on a host's runtime. Two
// images of one digest in a step (app:1 and app:latest) pull the same
// loopback name there, and the first to be named by the user's tag
// removes that name, which would fail the other while it still pulled or
// inspected by it. So a pull joins the one in flight for its reference,
// and a reference already relayed on this connection is not pulled again:
// the host holds the image (by a name of ours, or by the loopback name
// until one of ours does).
type pullOnce struct{ flight singleflight.Group }

// pull runs do for key unless done reports key relayed (then nothing new
// came: false), or joins the run of do in flight for key.
func (o *pullOnce) pull(key string, done func() bool, do func() (bool, error)) (bool, error) {
	if done() {
		return false, nil
	}
	v, err, _ := o.flight.Do(key, func() (any, error) {
		isNew, err := do()
		return isNew, err
	})
	isNew, _ := v.(bool)
	return isNew, err
}

// refKey is ref in one spelling: pull pulls a familiar name
// (busybox@sha256:...) and inspects what the user wrote
// (docker.io/library/busybox@sha256:...).
func refKey(ref string) string {
	if r, err := name.ParseReference(ref); err == nil {
		return r.Name()
	}
	return ref
}

// digestTag is the tag that holds a relayed image: <repository>:sha256-<hex>.
func digestTag(repo, digest string) string {
	return repo + ":" + strings.Replace(digest, ":", "-", 1)
}

// pull has the relay allow ref (repository@digest) with creds and the
// host's runtime pull it from the relay through this forward (fetch, given
// the loopback name), with no credential of any kind. It returns the
// loopback name the runtime now holds (set as soon as the pull succeeded,
// so the caller can remove it even on a later error), the image ID fetch
// answered with (CRI's; dockerd's answer names none), and, when the image
// was new to the host, its config's digest. A runtime reports a pull by a
// loopback name it never saw as a download even when it had the image,
// so the relay decides: the host asked for the image's config, which a
// runtime does only for an image it lacks. So a fresh host costs no round
// trip to ask what it holds before the pull.
func (f *forward) pull(ctx context.Context, ref string, creds registryauth.Credentials, fetch func(loopback string) (id string, err error)) (local, fetched, config string, err error) {
	_, dgst, ok := strings.Cut(ref, "@")
	if !ok {
		return "", "", "", fmt.Errorf("{Transfer}: relay pulls by digest, not %s", ref)
	}
	digest, err := name.NewDigest(ref)
	if err != nil {
		return "", "", "", err
	}
	// Allow (the upstream handshake and manifest: round trips to the
	// registry) runs while the forward opens (a round trip to the host);
	// its classified refusal still comes first, before the host is asked
	// to pull.
	var path string
	allowed := make(chan error, 1)
	go func() {
		var err error
		path, err = f.relay.Allow(ctx, digest, creds)
		allowed <- err
	}()
	port, err := f.port()
	if aerr := <-allowed; aerr != nil {
		return "", "", "", aerr
	}
	if err != nil {
		return "", "", "", err
	}
	loopback := fmt.Sprintf("127.0.0.1:%d/%s@%s", port, path, dgst)
	fetched, err = fetch(loopback)
	if err != nil {
		if upstream := f.relay.Err(path); upstream != nil {
			return "", "", "", upstream
		}
		return "", "", "", f.conn.lost(err)
	}
	if cfg, ok := f.relay.NewImage(f.host, path, dgst); ok {
		config = cfg
	}
	return loopback, fetched, config, nil
}

func (d *relayedDocker) Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	return d.once.pull(refKey(ref), func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.relayed[refKey(ref)] != nil
	}, func() (bool, error) { return d.pullRelayed(ctx, ref, platform, creds, progress) })
}

func (d *relayedDocker) pullRelayed(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	repo, dgst, _ := strings.Cut(ref, "@")
	local, _, config, err := d.fwd.pull(ctx, ref, creds, func(loopback string) (string, error) {
		_, err := d.engine.Pull(ctx, loopback, platform, registryauth.Anonymous, progress)
		return "", err
	})
	isNew := config != ""
	var id string
	if err == nil {
		id, err = d.imageID(ctx, local, config)
	}
	if err != nil {
		if local != "" {
			// Pulled, but not known by its ID: nothing of ours stays, even
			// when the step is cancelled (the image goes with that name
			// if it is its last).
			err = errors.Join(err, d.remove(ctx, local))
		}
		return false, err
	}
	ri := &relayedImage{id: id, hold: digestTag(repo, dgst), via: local, local: local}
	if names := image.ParseRepoDigests([]string{ref}); len(names) == 1 {
		ri.name = names[0]
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.relayed[refKey(ref)] = ri
	d.pending = append(d.pending, ri)
	return isNew, nil
}

// imageID is the ID of the image just pulled as local: a new image's
// config digest where the host's image IDs are config digests (the
// graphdriver store), else what inspecting local says (containerd's
// store, or an image the host had: config is "").
func (d *relayedDocker) imageID(ctx context.Context, local, config string) (string, error) {
	if config != "" {
		select {
		case <-d.storeKnown:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		d.mu.Lock()
		byConfig := d.configIDs
		d.mu.Unlock()
		if byConfig {
			return config, nil
		}
	}
	info, err := d.engine.Inspect(ctx, local)
	if err != nil {
		return "", fmt.Errorf("pulled %s from the relay, but inspecting it failed: %w", local, err)
	}
	return info.ID, nil
}

// remove removes the loopback name local, even when ctx ended.
func (d *relayedDocker) remove(ctx context.Context, local string) error {
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := d.engine.Remove(cleanup, local); err != nil {
		return fmt.Errorf("removing the relay's name %s: %w", local, err)
	}
	return nil
}

// release removes ri's loopback name; callers call it once a name of
// ours holds the image (removing it then only untags it). On an error the
// name stays pending, for Close.
func (d *relayedDocker) release(ctx context.Context, ri *relayedImage) error {
	d.mu.Lock()
	local := ri.local
	ri.local = ""
	d.mu.Unlock()
	if local == "" {
		return nil
	}
	err := d.remove(ctx, local)
	if err != nil {
		d.mu.Lock()
		ri.local = local
		d.mu.Unlock()
	}
	return err
}

// holdByDigest names ri by its digest tag, unless a name of ours holds it
// already or its loopback name is gone.
func (d *relayedDocker) holdByDigest(ctx context.Context, ri *relayedImage) error {
	d.mu.Lock()
	need := ri.local != "" && !ri.named
	d.mu.Unlock()
	if !need {
		return nil
	}
	if err := d.engine.Tag(ctx, ri.id, ri.hold); err != nil {
		return fmt.Errorf("pulled %s from the relay, but naming it %s failed: %w", ri.via, ri.hold, err)
	}
	d.mu.Lock()
	ri.named = true
	d.mu.Unlock()
	return nil
}

// Tag points target at a relayed image, then removes its loopback name
// while the caller goes on (pull inspects the image next: the two round
// trips run at once, as Inspect's own do). A failed removal leaves the
// name pending, and Close removes it or says so.
func (d *relayedDocker) Tag(ctx context.Context, source, target string) error {
	d.mu.Lock()
	ri := d.relayed[refKey(source)]
	d.mu.Unlock()
	if ri == nil {
		return d.engine.Tag(ctx, source, target)
	}
	if err := d.engine.Tag(ctx, ri.id, target); err != nil {
		return err
	}
	d.mu.Lock()
	ri.named = true
	d.mu.Unlock()
	d.mu.Lock()
	if !d.closing {
		d.aside.Go(func() { _ = d.release(ctx, ri) })
	}
	d.mu.Unlock()
	return nil
}

// Inspect describes ref; for an image this connection relayed it reports
// the relayed digest (the host pulled exactly it, by digest) and the image
// ID as the reference to run it by. A relayed image still held by its
// loopback name (a digest input: no Tag) is named by its digest tag
// first, and the loopback name removed while the image is inspected.
func (d *relayedDocker) Inspect(ctx context.Context, ref string) (image.Info, error) {
	d.mu.Lock()
	ri := d.relayed[refKey(ref)]
	d.mu.Unlock()
	released := make(chan error, 1)
	if ri != nil {
		if err := d.holdByDigest(ctx, ri); err != nil {
			return image.Info{}, err
		}
		go func() { released <- d.release(ctx, ri) }()
		ref = ri.id // a digest input: the host has no <repository>@<digest> name
	} else {
		released <- nil
	}
	info, err := d.engine.Inspect(ctx, ref)
	if rerr := <-released; rerr != nil {
		return image.Info{}, rerr
	}
	if err != nil {
		return info, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.relayed {
		if r.id == info.ID {
			// The loopback name, if the host answered before it went.
			info.RepoDigests = slices.DeleteFunc(info.RepoDigests, func(c reference.Canonical) bool { return c.String() == r.via })
			if r.name != nil {
				info.RepoDigests = append(info.RepoDigests, r.name)
			}
			info.Ref = info.ID
			break
		}
	}
	return info, nil
}

func (d *relayedDocker) Runtime() (name, namespace string) { return d.engine.Runtime() }

// Close removes every loopback name still on the host (a pull whose Tag
// or Inspect failed or never came), naming the image by its digest tag
// first, then closes the forward and the engine (and with it the
// connection). A loopback name goes even when the digest tag could not
// be given: it names a forward that is closing.
func (d *relayedDocker) Close() error {
	d.mu.Lock()
	d.closing = true
	d.mu.Unlock()
	d.aside.Wait()
	d.mu.Lock()
	pending := slices.Clone(d.pending)
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, ri := range pending {
		err := d.holdByDigest(ctx, ri)
		d.mu.Lock()
		ri.named = true // the name goes all the same
		d.mu.Unlock()
		errs = append(errs, err, d.release(ctx, ri))
	}
	return errors.Join(append(errs, d.fwd.closeWith(d.engine.Close))...)
}
