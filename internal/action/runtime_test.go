package action

import (
	"errors"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

func TestParseConfigRemoteRuntime(t *testing.T) {
	// The values parsed are sshdeploy's (TestParseRemoteRuntime); here,
	// that the inputs reach it, checked even with no ssh-host.
	tests := []struct {
		name      string
		in        map[string]string
		wantInput string // input named by the error; "" for success
	}{
		{"defaults", nil, ""},
		{"containerd on k3s", map[string]string{"remote-runtime": "Containerd", "remote-containerd-socket": "/run/k3s/containerd/containerd.sock"}, ""},
		{"socket as a unix URL", map[string]string{"remote-containerd-socket": "unix:///run/containerd/containerd.sock"}, ""},
		{"explicit k8s.io", map[string]string{"containerd-namespace": "k8s.io"}, ""},
		{"podman", map[string]string{"remote-runtime": "Podman"}, ""},
		{"unknown runtime", map[string]string{"remote-runtime": "cri-o"}, "remote-runtime"},
		{"relative socket", map[string]string{"remote-containerd-socket": "run/containerd.sock"}, "remote-containerd-socket"},
		{"docker socket over TCP", map[string]string{"remote-docker-socket": "tcp://1.2.3.4:2375"}, "remote-docker-socket"},
		// CRI pulls land in k8s.io whatever is asked: another namespace
		// would be reported and not be true.
		{"another namespace", map[string]string{"containerd-namespace": "default"}, "containerd-namespace"},
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
				if c.SSH != nil {
					t.Errorf("SSH settings with no ssh-host: %+v", c.SSH)
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
