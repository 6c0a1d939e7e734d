package sshdeploy

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

// testServer is sshtest's server, naming itself as a Host.
type testServer struct{ *sshtest.Server }

// startServer starts an sshtest server that accepts client.
func startServer(t *testing.T, client ssh.PublicKey, opts ...sshtest.Option) testServer {
	t.Helper()
	return testServer{sshtest.Start(t, client, opts...)}
}

func (s testServer) host(user string) Host { return Host{User: user, Name: "127.0.0.1", Port: s.Port} }

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
