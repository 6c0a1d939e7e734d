package sshdeploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/cri"
	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
)

// RuntimeKind says which runtime to pull into on the hosts.
type RuntimeKind string

const (
	// Auto uses whichever socket a host has, Docker's first.
	Auto       RuntimeKind = "auto"
	Docker     RuntimeKind = "docker"
	Containerd RuntimeKind = "containerd"
)

// Runtime is a container runtime on a host (a *docker.Engine or a
// *cri.ImageService) reached over one SSH connection; closing it closes
// both.
type Runtime interface {
	Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds ghcr.Credentials, progress func(done, total int64)) (bool, error)
	Inspect(ctx context.Context, ref string) (image.Info, error)
	Runtime() (name, namespace string)
	Close() error
}

type remote struct {
	rt   Runtime
	conn *Conn
}

func (r *remote) Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds ghcr.Credentials, progress func(done, total int64)) (bool, error) {
	return r.rt.Pull(ctx, ref, platform, creds, progress)
}
func (r *remote) Inspect(ctx context.Context, ref string) (image.Info, error) {
	return r.rt.Inspect(ctx, ref)
}
func (r *remote) Runtime() (name, namespace string) { return r.rt.Runtime() }
func (r *remote) Close() error                      { return errors.Join(r.rt.Close(), r.conn.Close()) }

// Open dials host, verifying its key, and opens the runtime settings name
// on it. The route is decided once, here: with Auto, Docker's socket by a
// stream-local channel, then containerd's, and only when sshd refuses both
// Docker's dial-stdio route (which works where stream-local forwarding is
// forbidden); with Docker, stream-local then dial-stdio; with Containerd,
// its socket by stream-local alone (no command carries gRPC). Nothing runs
// on the host but, on the last route, `docker system dial-stdio`.
func Open(ctx context.Context, host Host, s *Settings) (Runtime, error) {
	conn, err := Dial(ctx, host, s.Config)
	if err != nil {
		return nil, err
	}
	rt, err := conn.openRuntime(ctx, s)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if s.Relay != nil {
		e, ok := rt.(*docker.Engine)
		if !ok {
			rt.Close()
			conn.Close()
			return nil, fmt.Errorf("ssh-transfer: relay reaches Docker hosts only so far, and %s runs containerd; use ssh-transfer: direct for it", host.Addr())
		}
		rt = newRelayedDocker(e, s.Relay, conn)
	}
	r := &remote{rt: rt, conn: conn}
	if t, ok := rt.(tagger); ok {
		return &taggingRemote{remote: r, tag: t}, nil
	}
	return r, nil
}

// tagger is a runtime that can point a tag at an image (Docker); the pull
// policy finds the ability by type assertion, so the wrapper keeps it.
type tagger interface {
	Tag(ctx context.Context, source, target string) error
}

type taggingRemote struct {
	*remote
	tag tagger
}

func (r *taggingRemote) Tag(ctx context.Context, source, target string) error {
	return r.tag.Tag(ctx, source, target)
}

func (c *Conn) openRuntime(ctx context.Context, s *Settings) (Runtime, error) {
	dockerSock, ctrdSock := s.Socket, s.Runtime.ContainerdSocket
	if dockerSock == "" {
		dockerSock = defaultDockerSocket
	}
	if ctrdSock == "" {
		ctrdSock = cri.DefaultSocket
	}
	switch s.Runtime.Kind {
	case Containerd:
		first, err := c.DialUnix(ctx, ctrdSock)
		if err != nil {
			if isChannelRejected(err) {
				return nil, fmt.Errorf("reached %s over SSH, but not containerd's socket: %w (sshd refuses the channel when the socket is missing, when the SSH user may not open it, or with AllowStreamLocalForwarding no; set remote-containerd-socket to the node's socket, e.g. /run/k3s/containerd/containerd.sock on k3s)", c.host.Addr(), err)
			}
			return nil, err
		}
		return c.openContainerd(ctx, ctrdSock, first)
	case Docker:
		return c.openDocker(ctx, dockerSock, nil)
	}

	first, dockerErr := c.DialUnix(ctx, dockerSock)
	if dockerErr == nil {
		c.setRoute(dockerSock, RouteStreamLocal)
		return c.openDocker(ctx, dockerSock, first)
	}
	if !isChannelRejected(dockerErr) {
		return nil, dockerErr
	}
	first, ctrdErr := c.DialUnix(ctx, ctrdSock)
	if ctrdErr == nil {
		return c.openContainerd(ctx, ctrdSock, first)
	}
	if !isChannelRejected(ctrdErr) {
		return nil, ctrdErr
	}
	first, stdioErr := c.probeDialStdio(ctx, dockerSock)
	if stdioErr == nil {
		c.setRoute(dockerSock, RouteDialStdio)
		return c.openDocker(ctx, dockerSock, first)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, &NoRuntimeError{Host: c.host.Addr(),
		DockerSocket: dockerSock, Docker: &RouteError{Host: c.host.String(), Socket: dockerSock, StreamLocal: dockerErr, DialStdio: stdioErr},
		ContainerdSocket: ctrdSock, Containerd: ctrdErr}
}

// openDocker speaks the Engine API to socket; first, when set, is a
// connection the route discovery already opened.
func (c *Conn) openDocker(ctx context.Context, socket string, first net.Conn) (Runtime, error) {
	dial, release := firstThen(first, func(ctx context.Context) (net.Conn, error) { return c.DialDocker(ctx, socket) })
	e, err := docker.Over(ctx, dial)
	release()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("reached %s over SSH, but not its Docker daemon at %s: %w", c.host.Addr(), socket, err)
	}
	return e, nil
}

// openContainerd speaks gRPC to containerd's socket through stream-local
// channels; first is the channel that found the socket.
func (c *Conn) openContainerd(ctx context.Context, socket string, first net.Conn) (Runtime, error) {
	dial, release := firstThen(first, func(ctx context.Context) (net.Conn, error) { return c.DialUnix(ctx, socket) })
	d, err := cri.New(ctx, dial)
	release()
	if err != nil {
		return nil, fmt.Errorf("reached containerd's socket %s on %s over SSH, but: %w", socket, c.host.Addr(), err)
	}
	return d, nil
}

// firstThen is a dialer that hands out first (when not nil) once, then
// dials; release closes first if nobody took it.
func firstThen(first net.Conn, dial func(ctx context.Context) (net.Conn, error)) (func(ctx context.Context) (net.Conn, error), func()) {
	var mu sync.Mutex
	take := func() net.Conn {
		mu.Lock()
		defer mu.Unlock()
		c := first
		first = nil
		return c
	}
	return func(ctx context.Context) (net.Conn, error) {
			if c := take(); c != nil {
				return c, nil
			}
			return dial(ctx)
		}, func() {
			if c := take(); c != nil {
				c.Close()
			}
		}
}

// NoRuntimeError says a host offered neither a Docker nor a containerd
// socket at the paths tried.
type NoRuntimeError struct {
	Host             string
	DockerSocket     string
	Docker           error
	ContainerdSocket string
	Containerd       error
}

func (e *NoRuntimeError) Error() string {
	return fmt.Sprintf("found no container runtime on %s: tried Docker at %s (%v) and containerd at %s (%v); "+
		"point remote-docker-socket or remote-containerd-socket at the host's runtime, or set remote-runtime",
		e.Host, e.DockerSocket, e.Docker, e.ContainerdSocket, e.Containerd)
}

func (e *NoRuntimeError) Unwrap() []error { return []error{e.Docker, e.Containerd} }
