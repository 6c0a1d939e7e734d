// Package sshtest is an in-process SSH server for tests of
// internal/sshdeploy and of the action: public key authentication,
// direct-streamlocal channels to unix sockets, direct-tcpip (as a bastion),
// tcpip-forward (remote forwards, when granted) and exec sessions that
// emulate `docker system dial-stdio` and answer other commands as told.
// It stands in for OpenSSH's sshd, which internal/e2e runs for real. Only
// tests import it.
package sshtest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Server is an SSH server on 127.0.0.1 that accepts one client key.
type Server struct {
	// Addr is host:port and Port the port it listens on.
	Addr string
	Port int
	// HostKeys are the keys it presents (WithHostKeys; ed25519 by default).
	HostKeys []ssh.Signer
	// AuthAttempts counts the public keys offered (credentials a client
	// sent), Channels the channels opened of any type, Open the SSH
	// connections not yet ended.
	AuthAttempts, Channels, Open atomic.Int32

	t      testing.TB
	config *ssh.ServerConfig

	streamLocal bool // allow direct-streamlocal@openssh.com
	dockerCLI   bool // emulate the docker CLI for exec; else "command not found"
	stall       bool // accept TCP and never speak
	tcpForward  bool // grant tcpip-forward (remote forwards), as AllowTcpForwarding yes
	// sockets maps socket paths as the host names them (/run/podman/...)
	// to real sockets of the test; others are dialled as they are.
	sockets map[string]string
	// replies are what commands other than dial-stdio print.
	replies map[string]string

	mu       sync.Mutex
	commands []string
	forwards []string // addresses of the remote forwards granted
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// RSAKey is a 2048-bit key generated once per test binary: RSA generation
// is slow.
func RSAKey() *rsa.PrivateKey {
	rsaOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsaKey = k
	})
	return rsaKey
}

// NewSigner is a fresh key of kind: ed25519, ecdsa (P-256) or rsa (RSAKey).
func NewSigner(t testing.TB, kind string) ssh.Signer {
	t.Helper()
	var key any
	switch kind {
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	case "ecdsa":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	case "rsa":
		key = RSAKey()
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	s, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Option changes what the server allows or presents.
type Option func(*Server)

// WithHostKeys presents fresh keys of these kinds (NewSigner).
func WithHostKeys(kinds ...string) Option {
	return func(s *Server) {
		s.HostKeys = nil
		for _, k := range kinds {
			s.HostKeys = append(s.HostKeys, NewSigner(s.t, k))
		}
	}
}

// WithoutStreamLocal refuses direct-streamlocal channels, as sshd with
// AllowStreamLocalForwarding no.
func WithoutStreamLocal() Option { return func(s *Server) { s.streamLocal = false } }

// WithoutDockerCLI answers dial-stdio as a host without the docker CLI.
func WithoutDockerCLI() Option { return func(s *Server) { s.dockerCLI = false } }

// Stalling accepts TCP connections and never speaks.
func Stalling() Option { return func(s *Server) { s.stall = true } }

// WithTCPForward grants tcpip-forward, as AllowTcpForwarding yes.
func WithTCPForward() Option { return func(s *Server) { s.tcpForward = true } }

// WithSocket makes the host's socket at hostPath the test's socket real.
func WithSocket(hostPath, real string) Option {
	return func(s *Server) {
		if s.sockets == nil {
			s.sockets = map[string]string{}
		}
		s.sockets[hostPath] = real
	}
}

// WithReply has the command cmd print out and succeed; other commands
// than dial-stdio fail as not found.
func WithReply(cmd, out string) Option {
	return func(s *Server) {
		if s.replies == nil {
			s.replies = map[string]string{}
		}
		s.replies[cmd] = out
	}
}

// Start listens on loopback and accepts the client key; it stops with the
// test.
func Start(t testing.TB, client ssh.PublicKey, opts ...Option) *Server {
	t.Helper()
	s := &Server{t: t, streamLocal: true, dockerCLI: true}
	WithHostKeys("ed25519")(s)
	for _, o := range opts {
		o(s)
	}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			s.AuthAttempts.Add(1)
			if string(key.Marshal()) == string(client.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key")
		},
	}
	for _, k := range s.HostKeys {
		s.config.AddHostKey(k)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s.Addr = l.Addr().String()
	s.Port = l.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go s.handle(c)
		}
	}()
	return s
}

// KnownHosts is a known_hosts line per host key for name; "" names the
// server as clients dial it, [127.0.0.1]:port.
func (s *Server) KnownHosts(name string) string {
	if name == "" {
		name = fmt.Sprintf("[127.0.0.1]:%d", s.Port)
	}
	var b []byte
	for _, k := range s.HostKeys {
		b = append(b, fmt.Sprintf("%s %s", name, ssh.MarshalAuthorizedKey(k.PublicKey()))...)
	}
	return string(b)
}

func (s *Server) handle(c net.Conn) {
	if s.stall {
		io.Copy(io.Discard, c)
		return
	}
	sc, chans, reqs, err := ssh.NewServerConn(c, s.config)
	if err != nil {
		c.Close()
		return
	}
	defer sc.Close()
	s.Open.Add(1)
	defer s.Open.Add(-1)
	if s.tcpForward {
		go s.globalRequests(sc, reqs)
	} else {
		// Refused as OpenSSH refuses with AllowTcpForwarding no.
		go ssh.DiscardRequests(reqs)
	}
	for nc := range chans {
		s.Channels.Add(1)
		switch nc.ChannelType() {
		case "direct-streamlocal@openssh.com":
			var req struct {
				SocketPath string
				Reserved0  string
				Reserved1  uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &req); err != nil || !s.streamLocal {
				// What OpenSSH 9.2 answers when AllowStreamLocalForwarding is no.
				nc.Reject(ssh.ConnectionFailed, "open failed")
				continue
			}
			path := req.SocketPath
			if real, ok := s.sockets[path]; ok {
				path = real
			}
			u, err := net.Dial("unix", path)
			if err != nil {
				nc.Reject(ssh.ConnectionFailed, "open failed")
				continue
			}
			join(nc, u)
		case "direct-tcpip":
			var req struct {
				Host     string
				Port     uint32
				OrigHost string
				OrigPort uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &req); err != nil {
				nc.Reject(ssh.ConnectionFailed, "bad request")
				continue
			}
			u, err := net.Dial("tcp", net.JoinHostPort(req.Host, fmt.Sprint(req.Port)))
			if err != nil {
				nc.Reject(ssh.ConnectionFailed, err.Error())
				continue
			}
			join(nc, u)
		case "session":
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go s.session(ch, creqs)
		default:
			nc.Reject(ssh.UnknownChannelType, "no")
		}
	}
}

// globalRequests grants tcpip-forward as sshd does: it listens on the
// address asked for (port 0: one it picks), answers with the port, and
// opens a forwarded-tcpip channel per connection; cancel-tcpip-forward and
// the connection's end close the listener.
func (s *Server) globalRequests(sc *ssh.ServerConn, reqs <-chan *ssh.Request) {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for req := range reqs {
		var fwd struct {
			Addr string
			Port uint32
		}
		switch req.Type {
		case "tcpip-forward":
			if err := ssh.Unmarshal(req.Payload, &fwd); err != nil {
				req.Reply(false, nil)
				continue
			}
			l, err := net.Listen("tcp", net.JoinHostPort(fwd.Addr, fmt.Sprint(fwd.Port)))
			if err != nil {
				req.Reply(false, nil)
				continue
			}
			s.mu.Lock()
			s.forwards = append(s.forwards, l.Addr().String())
			s.mu.Unlock()
			listeners = append(listeners, l)
			port := uint32(l.Addr().(*net.TCPAddr).Port)
			req.Reply(true, binary.BigEndian.AppendUint32(nil, port))
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					origin := c.RemoteAddr().(*net.TCPAddr)
					ch, creqs, err := sc.OpenChannel("forwarded-tcpip", ssh.Marshal(struct {
						Addr       string
						Port       uint32
						OriginAddr string
						OriginPort uint32
					}{fwd.Addr, port, origin.IP.String(), uint32(origin.Port)}))
					if err != nil {
						c.Close()
						continue
					}
					go ssh.DiscardRequests(creqs)
					go pipe(ch, c)
				}
			}()
		case "cancel-tcpip-forward":
			ssh.Unmarshal(req.Payload, &fwd)
			for _, l := range listeners {
				if l.Addr().(*net.TCPAddr).Port == int(fwd.Port) {
					l.Close()
				}
			}
			req.Reply(true, nil)
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
}

var dialStdioRE = regexp.MustCompile(`^docker -H 'unix://([^']+)' system dial-stdio$`)

func (s *Server) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			req.Reply(false, nil)
			continue
		}
		var exec struct{ Command string }
		ssh.Unmarshal(req.Payload, &exec)
		req.Reply(true, nil)
		s.mu.Lock()
		s.commands = append(s.commands, exec.Command)
		s.mu.Unlock()
		status := s.exec(exec.Command, ch)
		ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, status))
		return
	}
}

// exec emulates the remote shell running one command.
func (s *Server) exec(cmd string, ch ssh.Channel) uint32 {
	m := dialStdioRE.FindStringSubmatch(cmd)
	out, replied := s.replies[cmd]
	switch {
	case replied:
		fmt.Fprintln(ch, out)
		return 0
	case m == nil:
		fmt.Fprintf(ch.Stderr(), "sh: 1: %s: not found\n", strings.Fields(cmd + " x")[0])
		return 127
	case !s.dockerCLI:
		fmt.Fprintln(ch.Stderr(), "bash: line 1: docker: command not found")
		return 127
	}
	u, err := net.Dial("unix", m[1])
	if err != nil {
		fmt.Fprintf(ch.Stderr(), "Cannot connect to the Docker daemon at unix://%s. Is the docker daemon running?\n", m[1])
		return 1
	}
	done := make(chan struct{})
	go func() {
		io.Copy(u, ch)
		u.(*net.UnixConn).CloseWrite()
		close(done)
	}()
	io.Copy(ch, u)
	u.Close()
	ch.CloseWrite()
	return 0
}

// Commands are the commands clients ran, in order.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.commands...)
}

// Forwards are the addresses of the remote forwards granted.
func (s *Server) Forwards() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.forwards...)
}

// join accepts nc and pipes it to u; u is closed if nc cannot be accepted.
func join(nc ssh.NewChannel, u net.Conn) {
	ch, creqs, err := nc.Accept()
	if err != nil {
		u.Close()
		return
	}
	go ssh.DiscardRequests(creqs)
	go pipe(ch, u)
}

func pipe(ch ssh.Channel, c net.Conn) {
	go func() {
		io.Copy(c, ch)
		if uc, ok := c.(interface{ CloseWrite() error }); ok {
			uc.CloseWrite()
		}
	}()
	io.Copy(ch, c)
	ch.CloseWrite()
	ch.Close()
	c.Close()
}
