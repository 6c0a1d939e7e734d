// Package image holds what every runtime adapter and the pull policy agree
// on about an image: a platform, parsed once from the input into a typed
// value, and what a runtime reports of an image it holds.
package image

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Info is what a runtime reports of an image after a pull.
type Info struct {
	ID          string
	RepoDigests []string
	// Platform is os/arch[/variant], as the runtime reports it.
	Platform string
	// Ref, when set, is the reference a deploy step uses on this runtime
	// in place of <repository>@<digest>, which the runtime cannot resolve
	// locally (a Docker host fed by the relay: the image ID).
	Ref string
}

// ParsePlatform reads os/arch[/variant]; the error names the platform input.
func ParsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(strings.TrimSpace(s), "/")
	bad := failure.Bad("platform", fmt.Sprintf("%q is not os/arch[/variant]", s), "e.g. linux/amd64 or linux/arm64/v8")
	if len(parts) < 2 || len(parts) > 3 {
		return ocispec.Platform{}, bad
	}
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, " \t:@") {
			return ocispec.Platform{}, bad
		}
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// FormatPlatform writes p as os/arch[/variant], the form users give.
func FormatPlatform(p ocispec.Platform) string {
	return strings.TrimRight(p.OS+"/"+p.Architecture+"/"+p.Variant, "/")
}

// SamePlatform compares a platform asked for with one a runtime reported;
// arm64's variant v8 is its default and may be left out on either side,
// and a request without a variant accepts any.
func SamePlatform(want ocispec.Platform, got string) bool {
	g, err := ParsePlatform(got)
	if err != nil {
		return false
	}
	norm := func(p ocispec.Platform) string {
		if p.Architecture == "arm64" && p.Variant == "v8" {
			p.Variant = ""
		}
		return p.OS + "/" + p.Architecture + "/" + p.Variant
	}
	if want.Variant == "" {
		g.Variant = ""
	}
	return norm(want) == norm(g)
}

// Pinned turns a user's reference into <repository>@<digest>, the name a
// runtime reports in RepoDigests; "" when either is unusable. The pull
// policy pins targets with it and the file adapters name what they wrote.
func Pinned(input, digest string) string {
	if digest == "" {
		return ""
	}
	named, err := reference.ParseNormalizedNamed(input)
	if err != nil {
		return ""
	}
	return reference.FamiliarName(named) + "@" + digest
}
