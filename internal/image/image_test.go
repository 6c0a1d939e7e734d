package image

import (
	"errors"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

func TestParsePlatform(t *testing.T) {
	for _, in := range []string{"linux/amd64", "linux/arm64/v8", " linux/arm/v7 "} {
		p, err := ParsePlatform(in)
		if err != nil {
			t.Errorf("ParsePlatform(%q) err=%v", in, err)
			continue
		}
		if back, _ := ParsePlatform(FormatPlatform(p)); FormatPlatform(back) != FormatPlatform(p) || back.Variant != p.Variant {
			t.Errorf("%q does not survive FormatPlatform: %+v", in, back)
		}
	}
	for _, in := range []string{"", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64", "linux:amd64/x"} {
		_, err := ParsePlatform(in)
		var bad *failure.BadInput
		if !errors.As(err, &bad) || bad.Input != "platform" {
			t.Errorf("ParsePlatform(%q) err=%v, want a platform input error", in, err)
		}
	}
}

func TestSamePlatform(t *testing.T) {
	tests := []struct {
		want, got string
		same      bool
	}{
		{"linux/amd64", "linux/amd64", true},
		{"linux/arm64", "linux/arm64/v8", true},
		{"linux/arm64/v8", "linux/arm64", true},
		{"linux/arm/v7", "linux/arm/v6", false},
		{"linux/arm", "linux/arm/v6", true},
		{"linux/arm64", "linux/amd64", false},
		{"linux/amd64", "garbage", false},
		{"linux/amd64", "/amd64", false},
		{"linux/amd64", "linux/amd64/v:1", false},
	}
	for _, tt := range tests {
		w, _ := ParsePlatform(tt.want)
		parts := append(strings.SplitN(tt.got, "/", 3), "", "")
		if got := SamePlatform(w, *PlatformOf(parts[0], parts[1], parts[2])); got != tt.same {
			t.Errorf("SamePlatform(%s, %s) = %v, want %v", tt.want, tt.got, got, tt.same)
		}
	}
}

// Digest reads the typed names: the pulled repository's digest, the probed
// one when the runtime holds several, none for another repository.
func TestInfoDigest(t *testing.T) {
	a, b := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	info := Info{RepoDigests: ParseRepoDigests([]string{"ghcr.io/acme/app@" + a, "ghcr.io/acme/app@" + b, "nginx@" + a, "not a name"})}
	if len(info.RepoDigests) != 3 {
		t.Fatalf("parsed %v", info.RepoDigests)
	}
	for _, tt := range []struct{ ref, probed, want string }{
		{"ghcr.io/acme/app:1", b, b},
		{"ghcr.io/acme/app:1", "", a},
		{"docker.io/library/nginx:latest", "", a},
		{"ghcr.io/acme/other:1", a, ""},
		{"Not A Ref", a, ""},
	} {
		if got := info.Digest(tt.ref, tt.probed); got != tt.want {
			t.Errorf("Digest(%s, %s) = %s, want %s", tt.ref, tt.probed, got, tt.want)
		}
	}
}
