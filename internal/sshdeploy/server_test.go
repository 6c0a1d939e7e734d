package sshdeploy

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
	"net/http"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// testServer is an in-process SSH server with just what sshdeploy uses:
// public key auth, direct-streamlocal, direct-tcpip (as a bastion) and exec
// sessions that emulate `docker system dial-stdio`.
type testServer struct {
	t        *testing.T
	addr     string
	port     int
	config   *ssh.ServerConfig
	hostKeys []ssh.Signer

	streamLocal bool // allow direct-streamlocal@openssh.com
	dockerCLI   bool // emulate the docker CLI for exec; else "command not found"
	stall       bool // accept TCP and never speak
	tcpForward  bool // grant tcpip-forward (remote forwards), as AllowTcpForwarding yes
	// sockets maps socket paths as the host names them (/run/podman/...)
	// to real sockets of the test; others are dialled as they are.
	sockets map[string]string
	// userRuntime is what the host prints for userRuntimeCommand
	// ("1000 /run/user/1000"); empty: the command fails.
	userRuntime string

	authAttempts atomic.Int32 // public key callbacks: credentials offered
	channels     atomic.Int32 // channels opened, of any type
	open         atomic.Int32 // SSH connections not yet ended
	mu           sync.Mutex
	commands     []string
	forwards     []string // addresses of the remote forwards granted
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

// testRSAKey is generated once: RSA generation is slow.
func testRSAKey(t testing.TB) *rsa.PrivateKey {
	rsaOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsaKey = k
	})
	return rsaKey
}

func newSigner(t testing.TB, kind string) ssh.Signer {
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
		key = testRSAKey(t)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	s, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type serverOption func(*testServer)

func withHostKeys(kinds ...string) serverOption {
	return func(s *testServer) {
		s.hostKeys = nil
		for _, k := range kinds {
			s.hostKeys = append(s.hostKeys, newSigner(s.t, k))
		}
	}
}
func withoutStreamLocal() serverOption { return func(s *testServer) { s.streamLocal = false } }
func withoutDockerCLI() serverOption   { return func(s *testServer) { s.dockerCLI = false } }
func stalling() serverOption           { return func(s *testServer) { s.stall = true } }
func withTCPForward() serverOption     { return func(s *testServer) { s.tcpForward = true } }

// withSocket makes the host's socket at hostPath the test's socket real.
func withSocket(hostPath, real string) serverOption {
	return func(s *testServer) {
		if s.sockets == nil {
			s.sockets = map[string]string{}
		}
		s.sockets[hostPath] = real
	}
}

// withUserRuntime is the uid and XDG_RUNTIME_DIR the host prints.
func withUserRuntime(out string) serverOption { return func(s *testServer) { s.userRuntime = out } }

// startServer listens on loopback and accepts the client key.
func startServer(t *testing.T, client ssh.PublicKey, opts ...serverOption) *testServer {
	t.Helper()
	s := &testServer{t: t, streamLocal: true, dockerCLI: true}
	withHostKeys("ed25519")(s)
	for _, o := range opts {
		o(s)
	}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			s.authAttempts.Add(1)
			if string(key.Marshal()) == string(client.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key")
		},
	}
	for _, k := range s.hostKeys {
		s.config.AddHostKey(k)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s.addr = l.Addr().String()
	s.port = l.Addr().(*net.TCPAddr).Port
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

func (s *testServer) host(user string) Host { return Host{User: user, Name: "127.0.0.1", Port: s.port} }

func (s *testServer) knownHostsLine(name string) string {
	var b []byte
	for _, k := range s.hostKeys {
		b = append(b, fmt.Sprintf("%s %s", name, ssh.MarshalAuthorizedKey(k.PublicKey()))...)
	}
	return string(b)
}

func (s *testServer) handle(c net.Conn) {
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
	s.open.Add(1)
	defer s.open.Add(-1)
	if s.tcpForward {
		go s.globalRequests(sc, reqs)
	} else {
		// Refused as OpenSSH refuses with AllowTcpForwarding no.
		go ssh.DiscardRequests(reqs)
	}
	for nc := range chans {
		s.channels.Add(1)
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
			ch, creqs, err := nc.Accept()
			if err != nil {
				u.Close()
				continue
			}
			go ssh.DiscardRequests(creqs)
			go pipe(ch, u)
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
			ch, creqs, err := nc.Accept()
			if err != nil {
				u.Close()
				continue
			}
			go ssh.DiscardRequests(creqs)
			go pipe(ch, u)
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
func (s *testServer) globalRequests(sc *ssh.ServerConn, reqs <-chan *ssh.Request) {
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

func (s *testServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
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
func (s *testServer) exec(cmd string, ch ssh.Channel) uint32 {
	m := dialStdioRE.FindStringSubmatch(cmd)
	switch {
	case cmd == userRuntimeCommand && s.userRuntime != "":
		fmt.Fprintln(ch, s.userRuntime)
		return 0
	case cmd == userRuntimeCommand:
		fmt.Fprintln(ch.Stderr(), "sh: 1: id: not found")
		return 127
	case !s.dockerCLI:
		fmt.Fprintln(ch.Stderr(), "bash: line 1: docker: command not found")
		return 127
	case m == nil:
		fmt.Fprintln(ch.Stderr(), "unexpected command")
		return 2
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

func (s *testServer) execCommands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.commands...)
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

// startFakeDocker serves a Docker-like /_ping on a unix socket.
func startFakeDocker(t *testing.T) string {
	t.Helper()
	return startFakeEngine(t, nil)
}

// startFakePodman serves Podman 4.3.1's /_ping on a unix socket.
func startFakePodman(t *testing.T) string {
	t.Helper()
	return startFakeEngine(t, http.Header{"Server": {"Libpod/4.3.1 (linux)"}, "Libpod-Api-Version": {"4.3.1"}})
}

func startFakeEngine(t *testing.T, ping http.Header) string {
	t.Helper()
	// Unix socket paths are short; t.TempDir can be long.
	dir, err := filepath.Abs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Api-Version", "1.41")
			for k, v := range ping {
				w.Header()[k] = v
			}
			if r.URL.Path == "/_ping" {
				io.WriteString(w, "OK")
				return
			}
			http.NotFound(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}
