package image

import (
	"errors"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

func FuzzParsePlatform(f *testing.F) {
	f.Add("linux/amd64")
	f.Add("linux/arm64/v8")
	f.Add("windows")
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParsePlatform(in)
		if err != nil {
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != "platform" {
				t.Fatalf("error %v does not name the platform input", err)
			}
			return
		}
		if p.OS == "" || p.Architecture == "" {
			t.Fatalf("%q accepted without os/arch", in)
		}
	})
}
