package docker

import (
	"context"
	"slices"
	"testing"
)

// The daemon's registry-mirrors come from the Engine API's /info, in the
// shape dockerd 20.10 sends it (insecure CIDRs as strings, mirrors as
// URLs with a trailing slash).
func TestMirrors(t *testing.T) {
	tests := []struct {
		name string
		info string
		want []string
	}{
		{"dockerd 20.10 with registry-mirrors",
			`{"ID":"x","RegistryConfig":{"AllowNondistributableArtifactsCIDRs":[],"AllowNondistributableArtifactsHostnames":[],"InsecureRegistryCIDRs":["127.0.0.0/8"],"IndexConfigs":{"docker.io":{"Name":"docker.io","Mirrors":["https://mirror.gcr.io/","http://10.0.0.5:5000/"],"Secure":true,"Official":true}},"Mirrors":["https://mirror.gcr.io/","http://10.0.0.5:5000/"]}}`,
			[]string{"https://mirror.gcr.io/", "http://10.0.0.5:5000/"}},
		{"no mirrors", `{"ID":"x","RegistryConfig":{"InsecureRegistryCIDRs":["127.0.0.0/8"],"IndexConfigs":{},"Mirrors":[]}}`, nil},
		{"no registry config", `{"ID":"x"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, f := openFake(t, stream())
			f.info = tt.info
			got, err := e.Mirrors(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Mirrors() = %q, want %q", got, tt.want)
			}
		})
	}
}
