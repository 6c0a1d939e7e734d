package action

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/relay"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// imageCache is cache-path: the relay over a persistent OCI layout, from
// which the runner's daemon pulls through a listener on its loopback and,
// with ssh-transfer: relay, the hosts through their SSH remote forwards.
type imageCache struct {
	srv  *relay.Server
	path string
}

func openCache(cfg Config, probeOpts []ghcr.Option) (*imageCache, error) {
	srv, err := relay.New(relay.Options{Store: cfg.CachePath, MaxBytes: cfg.RelayCacheMax, Transport: ghcr.Transport(probeOpts...), UserAgent: "ghcr-pull"})
	if err != nil {
		return nil, err
	}
	return &imageCache{srv: srv, path: cfg.CachePath}, nil
}

// daemon is the runner's Docker daemon pulling from the cache: the relayed
// Docker host's route (sshdeploy.Local), with the relay listening where
// the daemon reaches it on its own 127.0.0.1. When this process runs in a
// container of that daemon with a network of its own (a container action
// on the runner's job network), our 127.0.0.1 is not the daemon's: a
// forwarder on the host's network carries the daemon's requests to the
// relay (listenThroughHost).
func (c *imageCache) daemon(ctx context.Context, e *docker.Engine) (pull.Daemon, error) {
	if name, _ := e.Runtime(); name != docker.Docker {
		e.Close()
		return nil, fmt.Errorf("cache-path feeds Docker only so far, and the daemon is %s; drop cache-path", name)
	}
	self, inContainer, err := e.Self(ctx)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("cache-path: finding the action's own container: %w", err)
	}
	listen := listenLoopback
	if inContainer && !self.HostNetwork {
		listen = func() (net.Listener, error) { return listenThroughHost(e, self) }
	}
	return sshdeploy.Local(e, c.srv, listen), nil
}

// listenThroughHost listens on our address on the container's network and
// starts a forwarder from our own image on the host's network (`ghcr-pull
// relay-forward <our address>`: no secret, two addresses), whose port on
// the host's 127.0.0.1 the returned listener reports as its address.
// Only connections from the network's gateway (the host: the forwarder)
// are served, not other containers on the job network. Closing the
// listener removes the forwarder, which also ends by itself seconds after
// our listener is gone.
func listenThroughHost(e *docker.Engine, self docker.Container) (net.Listener, error) {
	l, err := net.Listen("tcp", netip.AddrPortFrom(self.IP, 0).String())
	if err != nil {
		return nil, fmt.Errorf("cache-path: listening on the container's network: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id, line, err := e.RunOnHost(ctx, self.Image, self.Entrypoint, []string{"relay-forward", l.Addr().String()})
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("cache-path: starting the relay's forwarder on the host's network from the action's image: %w", err)
	}
	remove := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return e.RemoveContainer(ctx, id)
	}
	addr, ok := strings.CutPrefix(line, relay.ForwardPrefix)
	ap, perr := netip.ParseAddrPort(addr)
	if !ok || perr != nil || !ap.Addr().IsLoopback() {
		l.Close()
		_ = remove()
		return nil, fmt.Errorf("cache-path: the relay's forwarder said %q, not the address it listens on", line)
	}
	return &hostListener{Listener: l, from: self.Gateway, addr: net.TCPAddrFromAddrPort(ap), remove: remove}, nil
}

// hostListener is the relay's listener on the container's network, known
// to the daemon by the forwarder's address on the host's loopback.
type hostListener struct {
	net.Listener
	from   netip.Addr
	addr   net.Addr
	remove func() error
	once   sync.Once
}

func (h *hostListener) Addr() net.Addr { return h.addr }

// Accept serves only the gateway's connections (the host's, hence the
// forwarder's).
func (h *hostListener) Accept() (net.Conn, error) {
	for {
		c, err := h.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ap, perr := netip.ParseAddrPort(c.RemoteAddr().String())
		if !h.from.IsValid() || perr == nil && ap.Addr().Unmap() == h.from {
			return c, nil
		}
		c.Close()
	}
}

func (h *hostListener) Close() error {
	err := h.Listener.Close()
	h.once.Do(func() { err = errors.Join(err, h.remove()) })
	return err
}

// listenLoopback is the relay's listener when the daemon shares our
// network namespace (the command line, or a job with the host's network):
// dockerd pulls plain HTTP from 127.0.0.0/8 without configuration.
func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// close completes the layout with the layers the daemon had already (and
// so did not ask for), names the images pulled in index.json, prunes the
// layout to what the step used and says what the cache saved.
func (c *imageCache) close(ctx context.Context, rep *writer, images []pull.Image, results []pull.Result) {
	refs := map[string]pull.Image{}
	for _, img := range images {
		refs[img.Input] = img
	}
	for _, r := range results {
		// Every target pulled through the cache's relay: the runner's
		// daemon and, with ssh-transfer: relay, the hosts.
		if img, ok := refs[r.Image]; ok && r.Err == nil {
			c.srv.Name(img.Ref, r.Digest)
		}
	}
	if err := c.srv.Complete(ctx); err != nil {
		rep.Warning("ghcr-pull: the image cache is incomplete", fmt.Sprintf("cache-path %s: fetching the layers the daemon already had: %v; the next run fetches them", c.path, err))
	}
	st := c.srv.Stats()
	if err := c.srv.Close(); err != nil {
		rep.Warning("ghcr-pull: the image cache could not be tidied", fmt.Sprintf("cache-path %s: %v; the next run verifies every blob it uses", c.path, err))
	}
	fetched := 0
	for _, n := range st.BlobFetches {
		fetched += n
	}
	rep.Info("cache-path: %d blobs from the cache, %d fetched upstream (%s), %d damaged and fetched again", len(st.Reused), fetched, bytesText(st.Bytes), len(st.Discarded))
}
