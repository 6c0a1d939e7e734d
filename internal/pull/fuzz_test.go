package pull

import (
	"github.com/ghcr-pull/ghcr-pull/internal/image"

	"errors"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

func FuzzParseImages(f *testing.F) {
	f.Add("ghcr.io/acme/app:1.2.3")
	f.Add("ghcr.io/a/b:1, ghcr.io/a/c@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n")
	f.Add("nginx")
	f.Add("UPPER/case")
	f.Add("\n,\n")
	f.Fuzz(func(t *testing.T, in string) {
		imgs, err := ParseImages(strings.Split(in, ","))
		if err != nil {
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != "image" {
				t.Fatalf("error %v does not name the image input", err)
			}
			return
		}
		for _, img := range imgs {
			if img.Ref == nil || img.Input == "" {
				t.Fatalf("empty image from %q", in)
			}
			// Whatever parses must pin: the daemon and the pinned ref agree.
			if image.Pinned(img.Input, "sha256:"+"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") == "" {
				t.Fatalf("%q parsed but cannot be pinned", img.Input)
			}
		}
	})
}
