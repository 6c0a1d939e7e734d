package sshdeploy

import (
	"context"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/cri"
	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// runtimeKind says which runtime to pull into on the hosts.
type runtimeKind string

const (
	// kindAuto uses whichever socket a host has, in the order
	// docs/runtimes.md gives: rootful Docker, rootful Podman, the SSH
	// user's rootless Docker and Podman, containerd, Docker's dial-stdio.
	kindAuto       runtimeKind = "auto"
	kindDocker     runtimeKind = "docker"
	kindPodman     runtimeKind = "podman"
	kindContainerd runtimeKind = "containerd"
)

// Runtime is what Open returns: the runtime adapter itself (a
// *docker.Engine or a *cri.ImageService, or its relayed form), which owns
// the SSH connection: closing it closes the connection. Pull and Inspect
// are what pull.Daemon asks; Tag (Docker, and every relayed runtime),
// Rename (containerd, direct and relayed: a mirror's pull given the user's
// names) and Runtime() (name, namespace) are there to find by type
// assertion, as pull finds them.
type Runtime interface {
	Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error)
	Inspect(ctx context.Context, ref string) (image.Info, error)
	Close() error
}

// Open dials host, verifying its key, and opens the runtime settings name
// on it. The route is decided once, here: with auto, the Engine API
// sockets by stream-local channels (rootful Docker, rootful Podman, then,
// for an SSH user other than root, the user's rootless Docker and Podman
// under $XDG_RUNTIME_DIR or /run/user/<uid>), then containerd's, and only
// when sshd refuses them all Docker's dial-stdio route (which works where
// stream-local forwarding is forbidden); with podman, its rootful then the
// user's socket; with docker, stream-local then dial-stdio; with
// containerd, its socket by stream-local alone (no command carries gRPC).
// Whether an Engine API socket is Docker or Podman is read from its ping
// answer. Nothing runs on the host but `id -u` (for a non-root user whose
// host has no rootful engine) and, on the last route, `docker system
// dial-stdio`. With s.Relay the runtime pulls from the relay (relay.go).
func Open(ctx context.Context, host Host, s *Settings) (Runtime, error) {
	conn, err := dialHost(ctx, host, s.config)
	if err != nil {
		return nil, err
	}
	var fwd *forward
	if s.Relay != nil {
		// The remote forward opens while the runtime does: sshd's answer
		// to tcpip-forward is then off the first pull's path. A refusal
		// is kept, and reported by that pull (forward.port).
		fwd = newForward(s.Relay, conn)
		go fwd.port()
	}
	rt, err := conn.openRuntime(ctx, s)
	if err != nil {
		if fwd != nil {
			fwd.close()
		}
		conn.Close()
		return nil, err
	}
	if fwd == nil {
		return rt, nil
	}
	switch e := rt.(type) {
	case *cri.ImageService:
		return newRelayedContainerd(e, fwd), nil
	case *docker.Engine:
		// Podman answers on the same Engine API, but the relay route is
		// proven against dockerd only.
		if name, _ := e.Runtime(); name != docker.Docker {
			fwd.close()
			rt.Close()
			return nil, fmt.Errorf("{Transfer}: relay reaches Docker and containerd hosts only so far, and %s runs %s; use {Transfer}: direct for it", host.Addr(), name)
		}
		return newRelayedDocker(e, fwd), nil
	}
	fwd.close()
	return rt, nil
}

// podmanSocket is where rootful Podman serves its Docker-compatible API
// (the podman.socket unit).
const podmanSocket = "/run/podman/podman.sock"

// triedSocket is one socket runtime discovery tried on a host, and why it was
// passed over.
type triedSocket struct {
	Runtime string // "Docker", "Podman", "the user's Docker", ...
	Socket  string
	Err     error
}

func (t triedSocket) String() string { return fmt.Sprintf("%s at %s (%v)", t.Runtime, t.Socket, t.Err) }

// engineSocket is a socket that speaks the Docker Engine API (dockerd or
// Podman's service), named for the error when nothing answers.
type engineSocket struct{ runtime, path string }

// engineSockets are the Engine API sockets kind tries before anything
// else, in order. A remote-docker-socket other than the default is the
// one socket the user meant; otherwise rootful Docker, then rootful
// Podman (auto), and the SSH user's own sockets come later.
func engineSockets(kind runtimeKind, socket string) []engineSocket {
	if socket != "" && socket != defaultDockerSocket {
		return []engineSocket{{"the Engine API", socket}}
	}
	switch kind {
	case kindPodman:
		return []engineSocket{{"Podman", podmanSocket}}
	case kindAuto:
		return []engineSocket{{"Docker", defaultDockerSocket}, {"Podman", podmanSocket}}
	}
	return []engineSocket{{"Docker", defaultDockerSocket}}
}

// openRuntime finds the runtime s names on the host and opens it. This is
// the one route discovery: every socket is tried first by a stream-local
// channel (which runs nothing on the host), and Docker's socket last by
// dial-stdio; the route that reached a socket is kept for the runtime's
// later connections (dialRoute).
func (c *sshConn) openRuntime(ctx context.Context, s *Settings) (Runtime, error) {
	dockerSock, ctrdSock := s.dockerSocket, s.containerdSocket
	if s.runtime == kindContainerd {
		first, err := c.dialUnix(ctx, ctrdSock)
		if err != nil {
			if isChannelRejected(err) {
				return nil, fmt.Errorf("reached %s over SSH, but not containerd's socket: %w (sshd refuses the channel when the socket is missing, when the SSH user may not open it, or with AllowStreamLocalForwarding no; set {ContainerdSocket} to the node's socket, e.g. /run/k3s/containerd/containerd.sock on k3s)", c.host.Addr(), err)
			}
			return nil, err
		}
		return c.openContainerd(ctx, ctrdSock, first)
	}

	// auto, docker and podman: the rootful sockets, then (auto, Podman)
	// the SSH user's own (rootless Docker and Podman), then (auto)
	// containerd's, and last (auto, Docker) Docker's dial-stdio route, for
	// hosts whose sshd refuses stream-local channels.
	var tried []triedSocket
	try := func(es engineSocket) (Runtime, bool, error) {
		first, err := c.dialUnix(ctx, es.path)
		if err == nil {
			c.setRoute(es.path, routeStreamLocal)
			rt, err := c.openDocker(ctx, es.path, first)
			return rt, true, err
		}
		if !isChannelRejected(err) {
			return nil, true, err
		}
		tried = append(tried, triedSocket{Runtime: es.runtime, Socket: es.path, Err: err})
		return nil, false, nil
	}
	sockets := engineSockets(s.runtime, dockerSock)
	for _, es := range sockets {
		if rt, done, err := try(es); done {
			return rt, err
		}
	}
	if len(sockets) > 1 || s.runtime == kindPodman {
		user, err := c.userSockets(ctx, s.runtime)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			tried = append(tried, triedSocket{Runtime: "the SSH user's runtime directory", Socket: "/run/user/<uid>", Err: err})
		}
		for _, es := range user {
			if rt, done, err := try(es); done {
				return rt, err
			}
		}
	}
	if s.runtime == kindPodman {
		return nil, &noRuntimeError{Host: c.host.Addr(), Tried: tried, Hint: "point {DockerSocket} at the host's Podman socket (systemctl enable --now podman.socket, or systemctl --user for rootless Podman)"}
	}
	if s.runtime == kindAuto {
		first, err := c.dialUnix(ctx, ctrdSock)
		if err == nil {
			return c.openContainerd(ctx, ctrdSock, first)
		}
		if !isChannelRejected(err) {
			return nil, err
		}
		tried = append(tried, triedSocket{Runtime: "containerd", Socket: ctrdSock, Err: err})
	}
	first, stdioErr := c.probeDialStdio(ctx, dockerSock)
	if stdioErr == nil {
		c.setRoute(dockerSock, routeDialStdio)
		return c.openDocker(ctx, dockerSock, first)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if s.runtime == kindDocker {
		return nil, &routeError{Host: c.host.String(), Socket: dockerSock, StreamLocal: tried[0].Err, DialStdio: stdioErr}
	}
	tried = append(tried, triedSocket{Runtime: "Docker by `docker system dial-stdio`", Socket: dockerSock, Err: stdioErr})
	return nil, &noRuntimeError{Host: c.host.Addr(), Tried: tried,
		Hint: "point {DockerSocket} or {ContainerdSocket} at the host's runtime, or set {Runtime}"}
}

// userRuntimeCommand prints the SSH user's uid and XDG_RUNTIME_DIR, where
// rootless Docker (docker.sock) and rootless Podman (podman/podman.sock)
// listen. It reads nothing secret and is sent no input.
const userRuntimeCommand = `printf '%s %s\n' "$(id -u)" "$XDG_RUNTIME_DIR"`

// userSockets are the SSH user's own Engine API sockets: in
// $XDG_RUNTIME_DIR when the login sets it (pam_systemd does), and in
// /run/user/<uid>, in that order. root has none: rootless engines are
// other users' (nothing is run on the host for root).
func (c *sshConn) userSockets(ctx context.Context, kind runtimeKind) ([]engineSocket, error) {
	if c.host.User == "root" {
		return nil, nil
	}
	out, err := c.output(ctx, userRuntimeCommand)
	if err != nil {
		return nil, fmt.Errorf("`id -u` on the host: %w", err)
	}
	uid, xdg, _ := strings.Cut(strings.TrimSpace(out), " ")
	if _, err := strconv.ParseUint(uid, 10, 32); err != nil {
		return nil, fmt.Errorf("`id -u` on the host printed %q, not a uid", failure.Clip(out))
	}
	var dirs []string
	if xdg = strings.TrimSpace(xdg); strings.HasPrefix(xdg, "/") && !strings.ContainsFunc(xdg, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		dirs = append(dirs, path.Clean(xdg))
	}
	if d := "/run/user/" + uid; len(dirs) == 0 || dirs[0] != d {
		dirs = append(dirs, d)
	}
	var out2 []engineSocket
	for _, d := range dirs {
		if kind != kindPodman {
			out2 = append(out2, engineSocket{"the user's Docker", d + "/docker.sock"})
		}
		out2 = append(out2, engineSocket{"the user's Podman", d + "/podman/podman.sock"})
	}
	return out2, nil
}

// output runs cmd in a session on the host and returns its standard
// output; ctx bounds it.
func (c *sshConn) output(ctx context.Context, cmd string) (string, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	session, err := c.client.NewSession()
	if err != nil {
		return "", err
	}
	defer session.Close()
	var stderr tailBuffer
	session.Stderr = &stderr
	go func() {
		out, err := session.Output(cmd)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if r.err != nil && stderr.String() != "" {
			return "", fmt.Errorf("%w: %s", r.err, stderr.String())
		}
		return string(r.out), r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// openDocker speaks the Engine API to socket by the route discovery found;
// first is the connection that found it.
func (c *sshConn) openDocker(ctx context.Context, socket string, first net.Conn) (Runtime, error) {
	dial, release := firstThen(first, func(ctx context.Context) (net.Conn, error) { return c.dialRoute(ctx, socket) })
	e, err := docker.Over(ctx, dial, c)
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
func (c *sshConn) openContainerd(ctx context.Context, socket string, first net.Conn) (Runtime, error) {
	dial, release := firstThen(first, func(ctx context.Context) (net.Conn, error) { return c.dialUnix(ctx, socket) })
	d, err := cri.New(ctx, dial, c)
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

// NoRuntimeError says a host offered no runtime at any path tried; it
// names every socket, in the order tried, and why each was passed over.
type noRuntimeError struct {
	Host  string
	Tried []triedSocket
	Hint  string
}

func (e *noRuntimeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "found no container runtime on %s: tried ", e.Host)
	for i, t := range e.Tried {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(t.String())
	}
	b.WriteString("; " + e.Hint)
	return b.String()
}

func (e *noRuntimeError) Unwrap() []error {
	var errs []error
	for _, t := range e.Tried {
		errs = append(errs, t.Err)
	}
	return errs
}
