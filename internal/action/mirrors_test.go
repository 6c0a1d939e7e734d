package action

import (
	"context"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// The runner's daemon's registry-mirrors are read from the Engine API
// and added after the mirrors input, for Docker Hub images only, and only
// when the runner's daemon is a destination.
func TestDaemonMirrors(t *testing.T) {
	const info = `{"ID":"x","RegistryConfig":{"InsecureRegistryCIDRs":["127.0.0.0/8"],"IndexConfigs":{},"Mirrors":["https://mirror.gcr.io/"]}}`
	tests := []struct {
		name  string
		image string
		input string
		ssh   bool
		want  []mirror.Mirror
	}{
		{"docker hub image", "alpine:3", "", false, []mirror.Mirror{{Host: "mirror.gcr.io", FromDaemon: true}}},
		{"after the input's", "docker.io/library/alpine:3", "docker.io=harbor.example.com/hub", false,
			[]mirror.Mirror{{Host: "harbor.example.com", Prefix: "hub"}, {Host: "mirror.gcr.io", FromDaemon: true}}},
		{"not for other registries", "ghcr.io/acme/app:1", "", false, nil},
		{"not when only SSH hosts pull", "alpine:3", "", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := startEngine(t, nil)
			eng.info = info
			images, err := pull.ParseImages([]string{tt.image})
			if err != nil {
				t.Fatal(err)
			}
			set, err := mirror.Parse(tt.input)
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{Images: images, Destination: DestinationDocker, DockerHost: eng.host, Mirrors: set}
			if tt.ssh {
				cfg.SSH = &sshdeploy.Settings{}
			}
			addDaemonMirrors(context.Background(), &cfg, newTerminalWriter(discard{}, discard{}))
			got := cfg.Mirrors.For(images[0].Ref.Context().RegistryStr())
			if len(got) != len(tt.want) {
				t.Fatalf("mirrors %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("mirror %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// The summary warns of a mirror that answered another digest by the note's
// flag, not by its words.
func TestMirrorSummaryWarnsOfDistrustedMirrors(t *testing.T) {
	results := []pull.Result{{Image: "docker.io/library/app:1", Host: "local", MirrorNotes: []pull.MirrorNote{
		{Text: "mirror m1 answers sha256:b, upstream resolved sha256:a", Distrusted: true},
		{Text: "mirror m2: not trusted by the proxy (503)"},
	}}}
	var b strings.Builder
	mirrorSummary(&b, results, func(s string) string { return s })
	got := b.String()
	if !strings.Contains(got, "⚠️ mirror m1 answers") || !strings.Contains(got, "ℹ️ mirror m2: not trusted by the proxy") {
		t.Errorf("summary:\n%s", got)
	}
}
