package sshdeploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// routeKind is how a connection reaches the Docker daemon's socket.
type routeKind string

const (
	// routeStreamLocal is a direct-streamlocal@openssh.com channel to the
	// socket, opened by sshd itself.
	routeStreamLocal routeKind = "stream-local"
	// routeDialStdio is an exec of `docker system dial-stdio` on the host.
	routeDialStdio routeKind = "dial-stdio"
)

// defaultDockerSocket is where Docker listens unless told otherwise.
const defaultDockerSocket = "/var/run/docker.sock"

// route is the route discovery found to socketPath, "" when none yet.
func (c *sshConn) route(socketPath string) routeKind {
	c.routeMu.Lock()
	defer c.routeMu.Unlock()
	return c.routes[socketPath]
}

func (c *sshConn) setRoute(socketPath string, r routeKind) {
	c.routeMu.Lock()
	defer c.routeMu.Unlock()
	c.routes[socketPath] = r
}

// dialRoute opens a connection to socketPath by the route discovery found
// for it (openRuntime): a runtime's every connection after the first.
func (c *sshConn) dialRoute(ctx context.Context, socketPath string) (net.Conn, error) {
	if c.route(socketPath) == routeDialStdio {
		return c.dialStdio(ctx, socketPath)
	}
	return c.dialUnix(ctx, socketPath)
}

func (c *sshConn) dialStreamLocal(ctx context.Context, socketPath string) (net.Conn, error) {
	return c.client.DialContext(ctx, "unix", socketPath)
}

// dialStdioCommand is the command of the dial-stdio route, one of the two
// sshdeploy runs on a host (userRuntimeCommand is the other). The socket
// path is not secret; it is quoted for the remote shell.
func dialStdioCommand(socketPath string) string {
	return "docker -H " + shellQuote("unix://"+socketPath) + " system dial-stdio"
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// probeDialStdio opens a dial-stdio connection and sends one ping through
// it: the command says nothing when it starts, since it prints nothing
// before the first request, and a missing CLI or daemon only shows when it
// exits. The connection, still open (HTTP keep-alive), is returned for use:
// each dial-stdio connection starts the docker CLI on the host, which
// costs more than the ping.
func (c *sshConn) probeDialStdio(ctx context.Context, socketPath string) (net.Conn, error) {
	conn, err := c.dialStdio(ctx, socketPath)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := io.WriteString(conn, "HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil {
		conn.Close()
		var ds *dialStdioError
		if errors.As(err, &ds) {
			return nil, ds
		}
		return nil, fmt.Errorf("no HTTP answer through it: %w", err)
	}
	resp.Body.Close()
	if br.Buffered() > 0 {
		// More than one answer arrived: the stream is not at a request
		// boundary, so it cannot be handed on.
		conn.Close()
		return c.dialStdio(ctx, socketPath)
	}
	return conn, nil
}

func (c *sshConn) dialStdio(ctx context.Context, socketPath string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type result struct {
		conn net.Conn
		err  error
	}
	// Opening a session has no context; do it aside so ctx still bounds it.
	done := make(chan result, 1)
	go func() {
		conn, err := startDialStdio(c.client, socketPath)
		done <- result{conn, err}
	}()
	select {
	case r := <-done:
		return r.conn, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func startDialStdio(client *ssh.Client, socketPath string) (net.Conn, error) {
	session, err := client.NewSession()
	if err != nil {
		return nil, err
	}
	stdin, err := session.StdinPipe()
	if err != nil {
		session.Close()
		return nil, err
	}
	stdout, err := session.StdoutPipe()
	if err != nil {
		session.Close()
		return nil, err
	}
	sc := &stdioConn{session: session, stdin: stdin, stdout: stdout, socket: socketPath, exited: make(chan struct{})}
	session.Stderr = &sc.stderr
	if err := session.Start(dialStdioCommand(socketPath)); err != nil {
		session.Close()
		return nil, err
	}
	go func() {
		sc.waitErr = session.Wait()
		close(sc.exited)
	}()
	return sc, nil
}

// stdioConn is a net.Conn over the stdin and stdout of a remote
// `docker system dial-stdio`, as the docker CLI's own ssh:// helper does.
type stdioConn struct {
	session *ssh.Session
	stdin   io.WriteCloser
	stdout  io.Reader
	stderr  tailBuffer
	socket  string

	exited  chan struct{}
	waitErr error

	closeOnce sync.Once
}

// exitError turns the end of the stream into the command's failure, when
// it failed: "bash: docker: command not found" reads better than EOF.
func (s *stdioConn) exitError(err error) error {
	select {
	case <-s.exited:
	case <-time.After(2 * time.Second):
		return err
	}
	var exit *ssh.ExitError
	switch {
	case errors.As(s.waitErr, &exit):
		return &dialStdioError{ExitStatus: exit.ExitStatus(), Stderr: s.stderr.String()}
	case s.waitErr != nil:
		var missing *ssh.ExitMissingError
		if errors.As(s.waitErr, &missing) {
			return &dialStdioError{ExitStatus: -1, Stderr: s.stderr.String()}
		}
	}
	return err
}

func (s *stdioConn) Read(p []byte) (int, error) {
	n, err := s.stdout.Read(p)
	if err == io.EOF {
		return n, s.exitError(err)
	}
	return n, err
}

func (s *stdioConn) Write(p []byte) (int, error) {
	n, err := s.stdin.Write(p)
	if err != nil {
		return n, s.exitError(err)
	}
	return n, nil
}

// CloseWrite half-closes, as the Docker client does for attach streams.
func (s *stdioConn) CloseWrite() error { return s.stdin.Close() }

func (s *stdioConn) Close() error {
	s.closeOnce.Do(func() {
		s.stdin.Close()
		s.session.Close()
	})
	return nil
}

func (s *stdioConn) LocalAddr() net.Addr  { return &net.UnixAddr{Name: "@", Net: "unix"} }
func (s *stdioConn) RemoteAddr() net.Addr { return &net.UnixAddr{Name: s.socket, Net: "unix"} }

// Deadlines are not supported by a session's pipes; like the docker CLI's
// command connection, they are accepted and ignored. The HTTP client
// cancels requests by closing the connection, which works.
func (s *stdioConn) SetDeadline(time.Time) error      { return nil }
func (s *stdioConn) SetReadDeadline(time.Time) error  { return nil }
func (s *stdioConn) SetWriteDeadline(time.Time) error { return nil }

// tailBuffer keeps the last bytes written to it: a remote command's stderr
// is shown to users, and must not grow without bound. What it keeps is
// cut anywhere; String cuts it again on a rune boundary, through
// failure.ClipTail.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

// tailMax leaves ClipTail room to find a rune start past the byte cut.
const tailMax = 2 * failure.MaxMessage

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailMax {
		t.buf = t.buf[len(t.buf)-tailMax:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return failure.ClipTail(string(t.buf))
}
