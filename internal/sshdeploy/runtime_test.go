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
	client := newSigner(t, "ed25519")
	dockerSock, ctrdSock := startFakeDocker(t), startFakeContainerd(t)
	const missingDocker, missingCtrd = "/nonexistent/docker.sock", "/nonexistent/containerd.sock"
	tests := []struct {
		name        string
		opts        []serverOption
		kind        RuntimeKind
		docker      string
		containerd  string
		wantRuntime string
		wantRoute   Route
		wantErr     []string
		wantNoRT    bool
	}{
		{name: "docker socket present", kind: Auto, docker: dockerSock, containerd: ctrdSock, wantRuntime: "docker", wantRoute: RouteStreamLocal},
		{name: "only containerd", kind: Auto, docker: missingDocker, containerd: ctrdSock, wantRuntime: "containerd"},
		{name: "both channels rejected, dial-stdio works", opts: []serverOption{withoutStreamLocal()}, kind: Auto,
			docker: dockerSock, containerd: ctrdSock, wantRuntime: "docker", wantRoute: RouteDialStdio},
		{name: "nothing", opts: []serverOption{withoutStreamLocal(), withoutDockerCLI()}, kind: Auto,
			docker: dockerSock, containerd: ctrdSock, wantNoRT: true,
			wantErr: []string{"found no container runtime", dockerSock, ctrdSock, "docker: command not found", "remote-runtime"}},
		{name: "no socket at all", kind: Auto, docker: missingDocker, containerd: missingCtrd, wantNoRT: true,
			wantErr: []string{missingDocker, missingCtrd, "remote-containerd-socket"}},
		{name: "containerd asked, no socket: the k3s hint", kind: Containerd, docker: dockerSock, containerd: missingCtrd,
			wantErr: []string{"not containerd's socket", "/run/k3s/containerd/containerd.sock", "remote-containerd-socket"}},
		{name: "containerd asked, docker ignored", kind: Containerd, docker: dockerSock, containerd: ctrdSock, wantRuntime: "containerd"},
		{name: "docker asked, containerd ignored", kind: Docker, docker: dockerSock, containerd: ctrdSock, wantRuntime: "docker", wantRoute: RouteStreamLocal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, client.PublicKey(), tt.opts...)
			conn, err := Dial(context.Background(), srv.host("root"), Config{Signer: client, HostKeys: insecureIgnoreHostKey()})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rt, err := conn.openRuntime(ctx, &Settings{Socket: tt.docker, Runtime: RuntimeChoice{Kind: tt.kind, ContainerdSocket: tt.containerd}})
			if tt.wantErr != nil {
				if err == nil {
					rt.Close()
					t.Fatal("a runtime was opened")
				}
				var nrt *NoRuntimeError
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
			if name, _ := rt.Runtime(); name != tt.wantRuntime {
				t.Fatalf("runtime %q, want %q", name, tt.wantRuntime)
			}
			if tt.wantRuntime == "docker" && conn.Route() != tt.wantRoute {
				t.Errorf("route %q, want %q", conn.Route(), tt.wantRoute)
			}
			if cmds := srv.execCommands(); tt.wantRoute != RouteDialStdio && len(cmds) != 0 {
				t.Errorf("ran %q on the host", cmds)
			}
		})
	}
}

// Open dials with the host key policy, then discovers the runtime; the
// connection goes with the runtime when it closes.
func TestOpenThroughSettings(t *testing.T) {
	client := newSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey())
	s := &Settings{Socket: startFakeDocker(t), Runtime: RuntimeChoice{Kind: Auto, ContainerdSocket: "/nonexistent/c.sock"},
		Config: Config{Signer: client, HostKeys: insecureIgnoreHostKey()}}
	rt, err := Open(context.Background(), srv.host("root"), s)
	if err != nil {
		t.Fatal(err)
	}
	if name, _ := rt.Runtime(); name != "docker" {
		t.Errorf("runtime %q", name)
	}
	if err := rt.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	s.Runtime.Kind, s.Socket = Containerd, "/nonexistent/d.sock"
	if _, err := Open(context.Background(), srv.host("root"), s); err == nil || !strings.Contains(err.Error(), "k3s") {
		t.Errorf("err = %v, want the k3s hint", err)
	}
}
