package image

import (
	"errors"
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
	}
	for _, tt := range tests {
		w, _ := ParsePlatform(tt.want)
		if got := SamePlatform(w, tt.got); got != tt.same {
			t.Errorf("SamePlatform(%s, %s) = %v, want %v", tt.want, tt.got, got, tt.same)
		}
	}
}
