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

// Info is what a runtime reports of an image after a pull, in typed
// values: an adapter reads the runtime's answer once, and the policy asks
// Digest, never parsing a name again.
type Info struct {
	ID string
	// RepoDigests name the image by digest in each repository the runtime
	// holds it under (<repository>@<digest>).
	RepoDigests []reference.Canonical
	// Platform is the image's platform as the runtime reports it; nil when
	// it does not say.
	Platform *ocispec.Platform
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

// Digest is the digest the image has in ref's repository: the pulled
// digest, when ref is the name it was pulled by. When the runtime holds
// several there (the tag moved), probed wins; "" when it holds none or ref
// is no reference.
func (i Info) Digest(ref, probed string) string {
	want, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ""
	}
	var found string
	for _, rd := range i.RepoDigests {
		if rd.Name() != want.Name() {
			continue
		}
		dg := rd.Digest().String()
		if dg == probed {
			return dg
		}
		if found == "" {
			found = dg
		}
	}
	return found
}

// PlatformString is Platform as os/arch[/variant]; "" when the runtime did
// not say.
func (i Info) PlatformString() string {
	if i.Platform == nil {
		return ""
	}
	return FormatPlatform(*i.Platform)
}

// ParseRepoDigests reads a runtime's <repository>@<digest> names, where
// the runtime's answer is read; names that are none are left out.
func ParseRepoDigests(names []string) []reference.Canonical {
	var out []reference.Canonical
	for _, n := range names {
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			continue
		}
		if c, ok := named.(reference.Canonical); ok {
			out = append(out, c)
		}
	}
	return out
}

// PlatformOf is a runtime's os, architecture and variant as a platform;
// nil when all three are empty (the runtime does not say).
func PlatformOf(goos, arch, variant string) *ocispec.Platform {
	if goos == "" && arch == "" && variant == "" {
		return nil
	}
	return &ocispec.Platform{OS: goos, Architecture: arch, Variant: variant}
}

// SamePlatform compares a platform asked for with one a runtime reported;
// arm64's variant v8 is its default and may be left out on either side,
// and a request without a variant accepts any. A reported platform that
// is no os/arch[/variant] (a part empty or with a separator in it) is
// never the same.
func SamePlatform(want, got ocispec.Platform) bool {
	for i, p := range []string{got.OS, got.Architecture, got.Variant} {
		if (p == "" && i < 2) || strings.ContainsAny(p, " \t:@/") {
			return false
		}
	}
	norm := func(p ocispec.Platform) string {
		if p.Architecture == "arm64" && p.Variant == "v8" {
			p.Variant = ""
		}
		return p.OS + "/" + p.Architecture + "/" + p.Variant
	}
	if want.Variant == "" {
		got.Variant = ""
	}
	return norm(want) == norm(got)
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
