package sshdeploy

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

// startEcho serves a line echo on a unix socket: any protocol will do.
func startEcho(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "e.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return sock
}

func TestDialUnix(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	sock := startEcho(t)
	tests := []struct {
		name     string
		opts     []sshtest.Option
		socket   string
		rejected bool
	}{
		{name: "reaches the socket", socket: sock},
		{name: "missing socket: rejected", socket: "/nonexistent/containerd.sock", rejected: true},
		{name: "stream-local forbidden: rejected, no fallback", opts: []sshtest.Option{sshtest.WithoutStreamLocal()}, socket: sock, rejected: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, client.PublicKey(), tt.opts...)
			conn, err := dialHost(context.Background(), srv.host("root"), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c, err := conn.dialUnix(context.Background(), tt.socket)
			if tt.rejected {
				if err == nil || !isChannelRejected(err) || !strings.Contains(err.Error(), tt.socket) {
					t.Fatalf("err = %v, want a channel rejection naming %s", err, tt.socket)
				}
				if cmds := srv.Commands(); len(cmds) != 0 {
					t.Fatalf("ran %q on the host; dialUnix runs nothing", cmds)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, "hello\n"); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != "hello\n" {
				t.Fatalf("echo = %q, %v", line, err)
			}
		})
	}
}

func TestDialUnixContext(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey())
	conn, err := dialHost(context.Background(), srv.host("root"), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := conn.dialUnix(ctx, startEcho(t)); err != context.Canceled {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
