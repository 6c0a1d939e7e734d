package sshdeploy

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

// fakeCRI answers the CRI Version call, all cri.New asks.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
}

func (fakeCRI) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "containerd", RuntimeVersion: "1.7.24", RuntimeApiVersion: "v1"}, nil
}

// startFakeContainerd serves the CRI on a unix socket.
func startFakeContainerd(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, fakeCRI{})
	runtimeapi.RegisterImageServiceServer(srv, fakeCRI{})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

// Remote runtime discovery: which runtime a host gets, by which route,
// and what is said when there is none.
func TestOpenRuntime(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	dockerSock, ctrdSock := startFakeDocker(t), startFakeContainerd(t)
	const missingDocker, missingCtrd = "/nonexistent/docker.sock", "/nonexistent/containerd.sock"
	tests := []struct {
		name        string
		opts        []sshtest.Option
		kind        runtimeKind
		docker      string
		containerd  string
		wantRuntime string
		wantRoute   routeKind
		wantErr     []string
		wantNoRT    bool
	}{
		{name: "docker socket present", kind: kindAuto, docker: dockerSock, containerd: ctrdSock, wantRuntime: "docker", wantRoute: routeStreamLocal},
		{name: "only containerd", kind: kindAuto, docker: missingDocker, containerd: ctrdSock, wantRuntime: "containerd"},
		{name: "both channels rejected, dial-stdio works", opts: []sshtest.Option{sshtest.WithoutStreamLocal()}, kind: kindAuto,
			docker: dockerSock, containerd: ctrdSock, wantRuntime: "docker", wantRoute: routeDialStdio},
		{name: "nothing", opts: []sshtest.Option{sshtest.WithoutStreamLocal(), sshtest.WithoutDockerCLI()}, kind: kindAuto,
			docker: dockerSock, containerd: ctrdSock, wantNoRT: true,
			wantErr: []string{"found no container runtime", dockerSock, ctrdSock, "docker: command not found", "{Runtime}"}},
		{name: "no socket at all", kind: kindAuto, docker: missingDocker, containerd: missingCtrd, wantNoRT: true,
			wantErr: []string{missingDocker, missingCtrd, "{ContainerdSocket}"}},
		{name: "containerd asked, no socket: the k3s hint", kind: kindContainerd, docker: dockerSock, containerd: missingCtrd,
			wantErr: []string{"not containerd's socket", "/run/k3s/containerd/containerd.sock", "{ContainerdSocket}"}},
		{name: "containerd asked, docker ignored", kind: kindContainerd, docker: dockerSock, containerd: ctrdSock, wantRuntime: "containerd"},
		{name: "docker asked, containerd ignored", kind: kindDocker, docker: dockerSock, containerd: ctrdSock, wantRuntime: "docker", wantRoute: routeStreamLocal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, client.PublicKey(), tt.opts...)
			conn, err := dialHost(context.Background(), srv.host("root"), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rt, err := conn.openRuntime(ctx, &Settings{dockerSocket: tt.docker, runtime: tt.kind, containerdSocket: tt.containerd})
			if tt.wantErr != nil {
				if err == nil {
					rt.Close()
					t.Fatal("a runtime was opened")
				}
				var nrt *noRuntimeError
				if errors.As(err, &nrt) != tt.wantNoRT {
					t.Errorf("err = %T %v, want *NoRuntimeError: %v", err, err, tt.wantNoRT)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error lacks %q: %v", want, err)
					}
				}
				return
			}
			if err != nil || rt == nil {
				t.Fatalf("no runtime: %v", err)
			}
			defer rt.Close()
			if name, _ := runtimeOf(rt); name != tt.wantRuntime {
				t.Fatalf("runtime %q, want %q", name, tt.wantRuntime)
			}
			if r := conn.route(tt.docker); tt.wantRuntime == "docker" && r != tt.wantRoute {
				t.Errorf("route %q, want %q", r, tt.wantRoute)
			}
			if cmds := srv.Commands(); tt.wantRoute != routeDialStdio && len(cmds) != 0 {
				t.Errorf("ran %q on the host", cmds)
			}
		})
	}
}

// waitUntil polls cond for up to 5 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// runtimeOf is the name and namespace rt gives itself, as pull reads them.
func runtimeOf(rt Runtime) (name, namespace string) {
	if n, ok := rt.(interface{ Runtime() (string, string) }); ok {
		return n.Runtime()
	}
	return "", ""
}

// Open dials with the host key policy, then discovers the runtime; the
// connection goes with the runtime when it closes.
func TestOpenThroughSettings(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey())
	s := &Settings{dockerSocket: startFakeDocker(t), runtime: kindAuto, containerdSocket: "/nonexistent/c.sock",
		config: dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()}}
	rt, err := Open(context.Background(), srv.host("root"), s)
	if err != nil {
		t.Fatal(err)
	}
	if name, _ := runtimeOf(rt); name != "docker" {
		t.Errorf("runtime %q", name)
	}
	if err := rt.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	waitUntil(t, "the server sees the connection closed", func() bool { return srv.Open.Load() == 0 })
	s.runtime, s.dockerSocket = kindContainerd, "/nonexistent/d.sock"
	if _, err := Open(context.Background(), srv.host("root"), s); err == nil || !strings.Contains(err.Error(), "k3s") {
		t.Errorf("err = %v, want the k3s hint", err)
	}
}

// Auto discovery on hosts with rootful and rootless engines: which socket
// wins, what runs on the host, and that the error names every socket
// tried when none answers.
func TestAutoDiscoveryOrder(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	docker, podman, ctrd := startFakeDocker(t), startFakePodman(t), startFakeContainerd(t)
	const xdg = "/run/user/1000"
	// Every path discovery may try, mapped to a test socket or to nothing:
	// the machine's own /var/run/docker.sock is never reached.
	hostWith := func(present map[string]string, opts ...sshtest.Option) []sshtest.Option {
		for _, p := range []string{defaultDockerSocket, podmanSocket, xdg + "/docker.sock", xdg + "/podman/podman.sock",
			"/tmp/xdg/docker.sock", "/tmp/xdg/podman/podman.sock", "/run/containerd/containerd.sock"} {
			real := "/nonexistent" + p
			if r, ok := present[p]; ok {
				real = r
			}
			opts = append(opts, sshtest.WithSocket(p, real))
		}
		return opts
	}
	tests := []struct {
		name        string
		user        string
		kind        runtimeKind
		opts        []sshtest.Option
		wantRuntime string
		wantCmds    int
		wantErr     []string
	}{
		{name: "rootful Docker before rootful Podman", user: "root", kind: kindAuto,
			opts: hostWith(map[string]string{defaultDockerSocket: docker, podmanSocket: podman}), wantRuntime: "docker"},
		{name: "rootful Podman alone", user: "root", kind: kindAuto,
			opts: hostWith(map[string]string{podmanSocket: podman}), wantRuntime: "podman"},
		{name: "rootful Podman before containerd", user: "root", kind: kindAuto,
			opts: hostWith(map[string]string{podmanSocket: podman, "/run/containerd/containerd.sock": ctrd}), wantRuntime: "podman"},
		{name: "podman asked, Docker there too", user: "root", kind: kindPodman,
			opts: hostWith(map[string]string{defaultDockerSocket: docker, podmanSocket: podman}), wantRuntime: "podman"},
		{name: "rootless Podman in XDG_RUNTIME_DIR", user: "alice", kind: kindAuto,
			opts: hostWith(map[string]string{"/tmp/xdg/podman/podman.sock": podman}, sshtest.WithReply(userRuntimeCommand, "1000 /tmp/xdg")), wantRuntime: "podman", wantCmds: 1},
		{name: "rootless Docker in /run/user/<uid>, no XDG_RUNTIME_DIR", user: "alice", kind: kindAuto,
			opts: hostWith(map[string]string{xdg + "/docker.sock": docker}, sshtest.WithReply(userRuntimeCommand, "1000 ")), wantRuntime: "docker", wantCmds: 1},
		{name: "rootless before containerd", user: "alice", kind: kindAuto,
			opts: hostWith(map[string]string{xdg + "/podman/podman.sock": podman, "/run/containerd/containerd.sock": ctrd}, sshtest.WithReply(userRuntimeCommand, "1000 "+xdg)), wantRuntime: "podman", wantCmds: 1},
		{name: "rootful first: no command for the user's sockets", user: "alice", kind: kindAuto,
			opts: hostWith(map[string]string{defaultDockerSocket: docker, xdg + "/podman/podman.sock": podman}, sshtest.WithReply(userRuntimeCommand, "1000 "+xdg)), wantRuntime: "docker"},
		{name: "root has no user sockets", user: "root", kind: kindAuto,
			opts: hostWith(map[string]string{"/run/user/0/podman/podman.sock": podman, "/run/containerd/containerd.sock": ctrd}, sshtest.WithReply(userRuntimeCommand, "0 /run/user/0")), wantRuntime: "containerd"},
		{name: "nothing anywhere: every socket named", user: "alice", kind: kindAuto,
			opts: hostWith(nil, sshtest.WithReply(userRuntimeCommand, "1000 /tmp/xdg"), sshtest.WithoutDockerCLI()), wantCmds: 2,
			wantErr: []string{defaultDockerSocket, podmanSocket, "/tmp/xdg/docker.sock", "/tmp/xdg/podman/podman.sock", xdg + "/docker.sock", xdg + "/podman/podman.sock",
				"/run/containerd/containerd.sock", "dial-stdio", "docker: command not found", "{Runtime}"}},
		{name: "nothing, and id fails: said so", user: "alice", kind: kindAuto,
			opts: hostWith(nil, sshtest.WithoutDockerCLI()), wantCmds: 2,
			wantErr: []string{defaultDockerSocket, podmanSocket, "id -u", "status 127: sh: 1: printf: not found", "/run/containerd/containerd.sock"}},
		{name: "podman asked, none: its sockets and the hint", user: "alice", kind: kindPodman,
			opts: hostWith(map[string]string{defaultDockerSocket: docker, xdg + "/docker.sock": docker}, sshtest.WithReply(userRuntimeCommand, "1000 "+xdg)), wantCmds: 1,
			wantErr: []string{podmanSocket, xdg + "/podman/podman.sock", "podman.socket"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, client.PublicKey(), tt.opts...)
			conn, err := dialHost(context.Background(), srv.host(tt.user), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rt, err := conn.openRuntime(ctx, &Settings{dockerSocket: defaultDockerSocket, runtime: tt.kind, containerdSocket: "/run/containerd/containerd.sock"})
			if cmds := srv.Commands(); len(cmds) != tt.wantCmds {
				t.Errorf("ran %q on the host, want %d commands", cmds, tt.wantCmds)
			}
			if tt.wantErr != nil {
				if err == nil {
					rt.Close()
					t.Fatal("a runtime was opened")
				}
				var nrt *noRuntimeError
				if !errors.As(err, &nrt) {
					t.Errorf("err = %T %v, want *NoRuntimeError", err, err)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error lacks %q: %v", want, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("no runtime: %v", err)
			}
			defer rt.Close()
			if name, _ := runtimeOf(rt); name != tt.wantRuntime {
				t.Errorf("runtime %q, want %q", name, tt.wantRuntime)
			}
		})
	}
}
