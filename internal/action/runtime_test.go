package action

import (
	"errors"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

func TestParseConfigRemoteRuntime(t *testing.T) {
	tests := []struct {
		name      string
		in        map[string]string
		wantInput string // input named by the error; "" for success
		want      sshdeploy.RuntimeChoice
	}{
		{"defaults", nil, "", sshdeploy.RuntimeChoice{Kind: sshdeploy.Auto, ContainerdSocket: "/run/containerd/containerd.sock"}},
		{"containerd on k3s", map[string]string{"remote-runtime": "Containerd", "remote-containerd-socket": "/run/k3s/containerd/containerd.sock"}, "",
			sshdeploy.RuntimeChoice{Kind: sshdeploy.Containerd, ContainerdSocket: "/run/k3s/containerd/containerd.sock"}},
		{"socket as a unix URL", map[string]string{"remote-containerd-socket": "unix:///run/containerd/containerd.sock"}, "",
			sshdeploy.RuntimeChoice{Kind: sshdeploy.Auto, ContainerdSocket: "/run/containerd/containerd.sock"}},
		{"docker", map[string]string{"remote-runtime": "docker"}, "", sshdeploy.RuntimeChoice{Kind: sshdeploy.Docker, ContainerdSocket: "/run/containerd/containerd.sock"}},
		{"explicit k8s.io", map[string]string{"containerd-namespace": "k8s.io"}, "", sshdeploy.RuntimeChoice{Kind: sshdeploy.Auto, ContainerdSocket: "/run/containerd/containerd.sock"}},
		{"podman", map[string]string{"remote-runtime": "Podman"}, "", sshdeploy.RuntimeChoice{Kind: sshdeploy.Podman, ContainerdSocket: "/run/containerd/containerd.sock"}},
		{"unknown runtime", map[string]string{"remote-runtime": "cri-o"}, "remote-runtime", sshdeploy.RuntimeChoice{}},
		{"relative socket", map[string]string{"remote-containerd-socket": "run/containerd.sock"}, "remote-containerd-socket", sshdeploy.RuntimeChoice{}},
		{"socket with control characters", map[string]string{"remote-containerd-socket": "/run/c.sock\x00x"}, "remote-containerd-socket", sshdeploy.RuntimeChoice{}},
		// CRI pulls land in k8s.io whatever is asked: another namespace
		// would be reported and not be true.
		{"another namespace", map[string]string{"containerd-namespace": "default"}, "containerd-namespace", sshdeploy.RuntimeChoice{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{"image": "ghcr.io/a/b:1"}
			for k, v := range tt.in {
				m[k] = v
			}
			c, err := ParseConfig(getter(m), testMetadata(t))
			if tt.wantInput == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if c.RemoteRuntime != tt.want {
					t.Errorf("RemoteRuntime = %+v, want %+v", c.RemoteRuntime, tt.want)
				}
				return
			}
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != tt.wantInput {
				t.Fatalf("err = %v, want one naming %s", err, tt.wantInput)
			}
		})
	}
}
