package sshdeploy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

func knownLine(name string, port int, k ssh.PublicKey) string {
	return knownhosts.Line([]string{net.JoinHostPort(name, itoa(port))}, k)
}

func itoa(i int) string { return strconv.Itoa(i) }

func policy(t *testing.T, known, fps string) *hostKeyPolicy {
	t.Helper()
	p, err := parseHostKeyPolicy(known, fps, false)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDialHostKeys(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey(), sshtest.WithHostKeys("rsa", "ecdsa", "ed25519"))
	rsaKey, ecKey, edKey := srv.HostKeys[0].PublicKey(), srv.HostKeys[1].PublicKey(), srv.HostKeys[2].PublicKey()
	other := sshtest.NewSigner(t, "ed25519").PublicKey()
	otherEC := sshtest.NewSigner(t, "ecdsa").PublicKey()
	addr := "[127.0.0.1]:" + itoa(srv.Port)

	tests := []struct {
		name    string
		policy  *hostKeyPolicy
		wantKey ssh.PublicKey // the key the connection ends up verified with
		refused int           // keys seen before refusal; 0 means success
	}{
		{name: "known_hosts ed25519", policy: policy(t, knownLine("127.0.0.1", srv.Port, edKey), ""), wantKey: edKey},
		{name: "known_hosts rsa only: the host is asked for its rsa key", policy: policy(t, knownLine("127.0.0.1", srv.Port, rsaKey), ""), wantKey: rsaKey},
		{name: "known_hosts as ssh-keyscan prints, with comments", policy: policy(t,
			"# 127.0.0.1:"+itoa(srv.Port)+" SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\n"+
				strings.Replace(srv.KnownHosts(addr), " ", "\t", 1), ""), wantKey: edKey},
		{name: "hashed known_hosts", policy: policy(t, knownhosts.Line([]string{knownhosts.HashHostname(addr)}, ecKey), ""), wantKey: ecKey},
		{name: "pattern known_hosts", policy: policy(t, "[127.0.0.*]:"+itoa(srv.Port)+" "+string(ssh.MarshalAuthorizedKey(edKey)), ""), wantKey: edKey},
		{name: "fingerprint ed25519", policy: policy(t, "", ssh.FingerprintSHA256(edKey)), wantKey: edKey},
		{name: "fingerprint rsa: tried after ed25519 and ecdsa were refused", policy: policy(t, "", ssh.FingerprintSHA256(rsaKey)), wantKey: rsaKey},
		{name: "fingerprint ecdsa among others", policy: policy(t, "", ssh.FingerprintSHA256(other)+"\n"+ssh.FingerprintSHA256(ecKey)), wantKey: ecKey},
		{name: "insecure", policy: insecureIgnoreHostKey(), wantKey: edKey},
		{name: "known_hosts mismatch", policy: policy(t, knownLine("127.0.0.1", srv.Port, other), ""), refused: 1},
		{name: "known_hosts mismatch of same type (ecdsa)", policy: policy(t, knownLine("127.0.0.1", srv.Port, otherEC), ""), refused: 1},
		{name: "fingerprint mismatch: every key type is seen and refused", policy: policy(t, "", ssh.FingerprintSHA256(other)), refused: 3},
		{name: "revoked wins over a fingerprint", policy: policy(t, "@revoked * "+string(ssh.MarshalAuthorizedKey(edKey)), ssh.FingerprintSHA256(edKey)), refused: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			authBefore, chansBefore := srv.AuthAttempts.Load(), srv.Channels.Load()
			conn, err := dialHost(context.Background(), srv.host("root"), dialConfig{Signer: client, HostKeys: tt.policy, Timeout: 5 * time.Second})
			if tt.refused == 0 {
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if got := ssh.FingerprintSHA256(conn.hostKey); got != ssh.FingerprintSHA256(tt.wantKey) {
					t.Fatalf("verified with %s, want %s", describeKey(conn.hostKey), describeKey(tt.wantKey))
				}
				return
			}
			var de *dialError
			var hk *hostKeyError
			if !errors.As(err, &de) || de.Stage != stageHandshake || !errors.As(err, &hk) {
				t.Fatalf("err = %v, want a handshake DialError wrapping HostKeyError", err)
			}
			if len(hk.Presented) != tt.refused {
				t.Fatalf("presented %v, want %d keys", hk.Presented, tt.refused)
			}
			// The refusal happened in the key exchange: no credential was
			// offered and no channel opened.
			if n := srv.AuthAttempts.Load() - authBefore; n != 0 {
				t.Fatalf("%d authentication attempts reached the host", n)
			}
			if n := srv.Channels.Load() - chansBefore; n != 0 {
				t.Fatalf("%d channels reached the host", n)
			}
			for _, want := range []string{"nothing was sent", "ssh-keyscan -p " + itoa(srv.Port) + " 127.0.0.1"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
			if hk.Revoked != strings.HasPrefix(tt.name, "revoked") {
				t.Errorf("Revoked = %v", hk.Revoked)
			}
		})
	}
}

func TestDialMissingHostKeysFailsBeforeConnecting(t *testing.T) {
	var dials atomic.Int32
	cfg := dialConfig{
		Signer:   sshtest.NewSigner(t, "ed25519"),
		HostKeys: policy(t, "", ""),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return nil, errors.New("must not dial")
		},
	}
	_, err := dialHost(context.Background(), Host{"root", "203.0.113.7", 2222}, cfg)
	wantInput(t, err, "KnownHosts", "ssh-keyscan -p 2222 203.0.113.7")
	cfg.HostKeys = policy(t, knownLine("other", 22, sshtest.NewSigner(t, "ed25519").PublicKey()), "")
	_, err = dialHost(context.Background(), Host{"root", "203.0.113.7", 2222}, cfg)
	wantInput(t, err, "KnownHosts", "no entry for [203.0.113.7]:2222")
	if dials.Load() != 0 {
		t.Fatalf("dialled %d times", dials.Load())
	}
}

func TestDialAuthFailure(t *testing.T) {
	srv := startServer(t, sshtest.NewSigner(t, "ed25519").PublicKey())
	_, err := dialHost(context.Background(), srv.host("deploy"), dialConfig{
		Signer:   sshtest.NewSigner(t, "ed25519"), // not the authorised one
		HostKeys: policy(t, srv.KnownHosts("[127.0.0.1]:"+itoa(srv.Port)), ""),
	})
	var de *dialError
	if !errors.As(err, &de) || de.Stage != stageAuth || !strings.Contains(err.Error(), `authorized_keys of "deploy"`) {
		t.Fatalf("err = %v, want an auth DialError", err)
	}
}

func TestDialTimeoutAndContext(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey(), sshtest.Stalling())
	cfg := dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey(), Timeout: 300 * time.Millisecond}

	start := time.Now()
	_, err := dialHost(context.Background(), srv.host("root"), cfg)
	var de *dialError
	if !errors.As(err, &de) || de.Stage != stageHandshake || !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "{Timeout}") {
		t.Fatalf("err = %v, want a handshake timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s for a 300ms timeout", d)
	}

	cfg.Timeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = dialHost(ctx, srv.host("root"), cfg)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("err = %v after %s, want the context's deadline", err, time.Since(start))
	}

	// Nothing listening: a connect failure.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	_, err = dialHost(context.Background(), Host{"root", "127.0.0.1", port}, cfg)
	if !errors.As(err, &de) || de.Stage != stageConnect {
		t.Fatalf("err = %v, want a connect DialError", err)
	}
}

func TestDialThroughProxyJump(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	bastion := startServer(t, client.PublicKey(), sshtest.WithHostKeys("ecdsa"))
	target := startServer(t, client.PublicKey(), sshtest.WithHostKeys("ed25519"))
	sock := startFakeDocker(t)
	known := knownLine("127.0.0.1", bastion.Port, bastion.HostKeys[0].PublicKey()) + "\n" +
		knownLine("127.0.0.1", target.Port, target.HostKeys[0].PublicKey())
	cfg := dialConfig{Signer: client, HostKeys: policy(t, known, ""), ProxyJump: []Host{bastion.host("jump")}}

	conn, err := dialHost(context.Background(), target.host("root"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pingDocker(t, conn, sock)
	conn.Close()
	if bastion.Channels.Load() < 1 {
		t.Fatal("the bastion forwarded nothing")
	}

	// The target behind the bastion is verified too.
	cfg.HostKeys = policy(t, knownLine("127.0.0.1", bastion.Port, bastion.HostKeys[0].PublicKey())+"\n"+
		knownLine("127.0.0.1", target.Port, sshtest.NewSigner(t, "ed25519").PublicKey()), "")
	authBefore := target.AuthAttempts.Load()
	_, err = dialHost(context.Background(), target.host("root"), cfg)
	var de *dialError
	var hk *hostKeyError
	if !errors.As(err, &de) || de.Via != bastion.host("jump").String() || !errors.As(err, &hk) {
		t.Fatalf("err = %v, want a HostKeyError through the bastion", err)
	}
	if target.AuthAttempts.Load() != authBefore {
		t.Fatal("credentials reached the target")
	}

	// So is the bastion.
	cfg.HostKeys = policy(t, knownLine("127.0.0.1", bastion.Port, sshtest.NewSigner(t, "ecdsa").PublicKey())+"\n"+
		knownLine("127.0.0.1", target.Port, target.HostKeys[0].PublicKey()), "")
	_, err = dialHost(context.Background(), target.host("root"), cfg)
	if !errors.As(err, &de) || de.Via != "" || de.Host != bastion.host("jump").String() || !errors.As(err, &hk) {
		t.Fatalf("err = %v, want the bastion's HostKeyError", err)
	}
}

func pingDocker(t *testing.T, conn *sshConn, sock string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return conn.dialRoute(ctx, sock) }}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://docker/_ping")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "OK" {
		t.Fatalf("ping: %s %q", resp.Status, body)
	}
}

// Docker's socket is reached by stream-local, else dial-stdio, found once
// by openRuntime; the runtime's later connections take the same route.
func TestDockerRoutes(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	sock := startFakeDocker(t)
	tests := []struct {
		name      string
		opts      []sshtest.Option
		socket    string
		wantRoute routeKind
		wantErr   []string
	}{
		{name: "stream-local", wantRoute: routeStreamLocal},
		{name: "stream-local refused: dial-stdio", opts: []sshtest.Option{sshtest.WithoutStreamLocal()}, wantRoute: routeDialStdio},
		{name: "both refused: no docker CLI", opts: []sshtest.Option{sshtest.WithoutStreamLocal(), sshtest.WithoutDockerCLI()},
			wantErr: []string{"by either route", "AllowStreamLocalForwarding", "open failed", "exit status 127", "docker: command not found on the remote PATH"}},
		{name: "missing socket", socket: "/nonexistent/docker.sock",
			wantErr: []string{"by either route", "Cannot connect to the Docker daemon at unix:///nonexistent/docker.sock", "{DockerSocket}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, client.PublicKey(), tt.opts...)
			conn, err := dialHost(context.Background(), srv.host("root"), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			socket := sock
			if tt.socket != "" {
				socket = tt.socket
			}
			rt, err := conn.openRuntime(context.Background(), &Settings{runtime: kindDocker, dockerSocket: socket, containerdSocket: "/nonexistent/c.sock"})
			if tt.wantErr != nil {
				var re *routeError
				if !errors.As(err, &re) {
					t.Fatalf("err = %v, want *RouteError", err)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error lacks %q: %v", want, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Close()
			for i := 0; i < 2; i++ {
				pingDocker(t, conn, socket)
			}
			if r := conn.route(socket); r != tt.wantRoute {
				t.Fatalf("route %q, want %q", r, tt.wantRoute)
			}
			cmds := srv.Commands()
			want := "docker -H 'unix://" + socket + "' system dial-stdio"
			for _, c := range cmds {
				if c != want {
					t.Fatalf("ran %q on the host; the only command should be %q", c, want)
				}
			}
			if tt.wantRoute == routeStreamLocal && len(cmds) != 0 {
				t.Fatalf("stream-local ran commands: %q", cmds)
			}
			// One per connection (each ping has its own HTTP client): the
			// probe's connection serves the runtime's own ping.
			if tt.wantRoute == routeDialStdio && len(cmds) != 3 {
				t.Fatalf("ran %d dial-stdio commands, want 3", len(cmds))
			}
		})
	}
}

func TestDockerRouteContext(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey())
	conn, err := dialHost(context.Background(), srv.host("root"), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := conn.openRuntime(ctx, &Settings{runtime: kindDocker, dockerSocket: "/x.sock"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func TestDialStdioCommandQuoting(t *testing.T) {
	if got := dialStdioCommand("/run/it's/docker.sock"); got != `docker -H 'unix:///run/it'\''s/docker.sock' system dial-stdio` {
		t.Fatal(got)
	}
}

func TestKeepAliveClosesDeadConnection(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey())
	// A proxy that can be frozen: it stops forwarding, as a dead path does.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var frozen atomic.Bool
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", srv.Addr)
		if err != nil {
			return
		}
		fwd := func(dst, src net.Conn) {
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if err != nil {
					return
				}
				if !frozen.Load() {
					dst.Write(buf[:n])
				}
			}
		}
		go fwd(u, c)
		fwd(c, u)
	}()
	port := l.Addr().(*net.TCPAddr).Port
	conn, err := dialHost(context.Background(), Host{"root", "127.0.0.1", port}, dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey(), KeepAlive: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	frozen.Store(true)
	done := make(chan error, 1)
	go func() { done <- conn.client.Wait() }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("a connection without keepalive answers stayed open")
	}
}
