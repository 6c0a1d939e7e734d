package mirror

import (
	"errors"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// The mirrors input never panics: it parses, or fails naming the input;
// every mirror it yields makes a valid reference.
func FuzzParse(f *testing.F) {
	f.Add("docker.io=mirror.gcr.io")
	f.Add("docker.io=https://harbor.example.com/dockerhub-proxy/\nghcr.io=http://127.0.0.1:5001")
	f.Add("=,=\n#x\nregistry-1.docker.io=index.docker.io/x")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != "Mirrors" {
				t.Fatalf("error %v does not name the input", err)
			}
			return
		}
		repo, _ := name.NewRepository("library/app")
		for _, ms := range s {
			for _, m := range ms {
				if _, err := m.Ref(repo, "sha256:0000000000000000000000000000000000000000000000000000000000000000"); err != nil {
					t.Fatalf("mirror %+v from %q makes no reference: %v", m, in, err)
				}
			}
		}
	})
}
