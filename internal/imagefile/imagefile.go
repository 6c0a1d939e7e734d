// Package imagefile writes images as files instead of into a daemon: an
// OCI image layout (a directory that crane, skopeo, containerd and trivy
// read) or a `docker load` archive. Each is a pull.Daemon, so the pull
// policy (probe, anonymous fallback, pinning, verification) is the same as
// for Docker: pull hands it the probed digest and the credentials that
// worked, and it fetches exactly that digest with them.
//
// A file target behaves like Docker's pull-by-digest-then-tag: Pull fetches
// and writes the digest, Tag names it, Inspect reports what is at the path.
// Nothing is ever half-written at the path: everything is written beside
// it under a ".ghcr-pull-" name and renamed into place once complete, and
// removed on any failure.
package imagefile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// Format is a kind of image file; the strings are destination values.
type Format string

const (
	// Layout is an OCI image layout directory.
	Layout Format = "oci-layout"
	// Tarball is a `docker load` archive (docker save's format).
	Tarball Format = "tar"
)

// Options say how a file target reaches the registry.
type Options struct {
	// Transport reaches the registry: ghcr.Transport, as the probe uses
	// (plain HTTP refused off loopback, tokens masked as they arrive).
	Transport http.RoundTripper
	UserAgent string
}

func (o Options) withDefaults() Options {
	if o.Transport == nil {
		o.Transport = remote.DefaultTransport
	}
	if o.UserAgent == "" {
		o.UserAgent = "ghcr-pull"
	}
	return o
}

// DefaultPlatform is the platform a tar holds when none is asked for: the
// machine's own (the action's container runs on the runner), since the tar
// is usually loaded by this runner's daemon or a kind cluster on it.
func DefaultPlatform() ocispec.Platform {
	return ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// fetch gets ref's top-level manifest with creds. With a registry token
// (the probe's pull-scoped token) only the token is sent, as Docker is
// sent it; go-containerregistry's own retries are off, internal/retry
// (around Pull) does them in the open.
func fetch(ctx context.Context, ref name.Reference, creds registryauth.Credentials, o Options) (*remote.Descriptor, error) {
	desc, err := remote.Get(ref, remoteOptions(ctx, creds, o)...)
	if err != nil {
		return nil, failure.FromRegistry(err, creds.IsAnonymous())
	}
	return desc, nil
}

func remoteOptions(ctx context.Context, creds registryauth.Credentials, o Options) []remote.Option {
	auth := creds.Authenticator()
	if creds.RegistryToken != "" {
		auth = authn.FromConfig(authn.AuthConfig{RegistryToken: creds.RegistryToken})
	}
	return []remote.Option{
		remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(o.Transport), remote.WithUserAgent(o.UserAgent),
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}), remote.WithRetryStatusCodes(),
		remote.WithRetryPredicate(func(error) bool { return false }),
	}
}

// platformImage picks want's image from an index, with the probe's rule:
// arm64's v8 variant may be left out on either side.
func platformImage(ii v1.ImageIndex, ref name.Reference, want ocispec.Platform) (v1.Image, v1.Descriptor, error) {
	m, err := ii.IndexManifest()
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	wantV1 := v1.Platform{OS: want.OS, Architecture: want.Architecture, Variant: want.Variant}
	var have []string
	for _, d := range m.Manifests {
		if d.Platform == nil || !d.MediaType.IsImage() {
			continue
		}
		got := ocispec.Platform{OS: d.Platform.OS, Architecture: d.Platform.Architecture, Variant: d.Platform.Variant}
		if d.Platform.Satisfies(wantV1) || image.SamePlatform(want, got) {
			img, err := ii.Image(d.Digest)
			return img, d, err
		}
		have = append(have, image.FormatPlatform(got))
	}
	return nil, v1.Descriptor{}, failure.Bad("platform",
		fmt.Sprintf("%s has no manifest for %s; it has %s", ref.Context(), image.FormatPlatform(want), strings.Join(have, ", ")),
		"set platform to one the image provides")
}

// platformOf is an image's os/arch[/variant], from its config.
func platformOf(img v1.Image) (*ocispec.Platform, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	return image.PlatformOf(cf.OS, cf.Architecture, cf.Variant), nil
}

// fullName is the name a reference is stored under: normalized
// (docker.io/library/alpine:3, ghcr.io/o/app@sha256:...); with both a tag
// and a digest, the digest names it, as it is what was pulled.
func fullName(ref string) (string, error) {
	n, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", err
	}
	if c, ok := n.(reference.Canonical); ok {
		if d, err := reference.WithDigest(reference.TrimNamed(n), c.Digest()); err == nil {
			return d.String(), nil
		}
	}
	return n.String(), nil
}

// repoDigests names dg in each reference's repository: the user's, and
// the one pulled from when that differs (a mirror).
func repoDigests(dg digest.Digest, refs ...string) []reference.Canonical {
	var out []reference.Canonical
	for _, r := range refs {
		named, err := reference.ParseNormalizedNamed(r)
		if err != nil {
			continue
		}
		rd, err := reference.WithDigest(reference.TrimNamed(named), dg)
		if err == nil && !slices.ContainsFunc(out, func(c reference.Canonical) bool { return c.String() == rd.String() }) {
			out = append(out, rd)
		}
	}
	return out
}

// tempPrefix marks what is being written beside path; a run that is
// killed (not cancelled) may leave one behind, never a half-written path.
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".ghcr-pull-" }

// ResolvePath turns the path input into an absolute path. Relative paths
// resolve against base; with bounded (GitHub Actions: base is the job's
// workspace, the only directory the action's container shares with later
// steps) the path must lie inside base, symlinks included. What is already
// at the path must be something the format can replace or add to.
func ResolvePath(format Format, raw, base string, bounded bool) (string, error) {
	ex := "images/app.tar"
	if format == Layout {
		ex = "images/layout"
	}
	return resolve(pathInput{name: "Path", format: format, example: ex}, raw, base, bounded)
}

// ResolveCachePath turns the cache-path input (the relay's persistent OCI
// layout) into an absolute path, with the path input's rules: inside the
// job's workspace when bounded, and a new or empty directory or an OCI
// layout.
func ResolveCachePath(raw, base string, bounded bool) (string, error) {
	return resolve(pathInput{name: "CachePath", format: Layout, example: ".cache/ghcr-pull"}, raw, base, bounded)
}

// pathInput is an input that names where files go.
type pathInput struct {
	// name is how errors name the setting: Path or CachePath; {Format}
	// in their text is the setting that chose the format. The caller
	// names them as its users know them.
	name    string
	format  Format
	example string
}

func resolve(in pathInput, raw, base string, bounded bool) (string, error) {
	format := in.format
	raw = strings.TrimSpace(raw)
	p := raw
	if !filepath.IsAbs(p) {
		p = filepath.Join(base, p)
	}
	p = filepath.Clean(p)
	if bounded {
		outside := failure.Bad(in.name,
			fmt.Sprintf("%q is outside the job's workspace %s, the only directory the action's container shares with later steps", raw, base),
			"use a path inside the workspace, e.g. "+in.example+" (relative paths resolve there)")
		if !within(base, p) {
			return "", outside
		}
		if p == filepath.Clean(base) {
			return "", failure.Bad(in.name, "names the workspace itself", "name a file or directory inside it, e.g. "+in.example)
		}
		// A symlink inside the workspace may point out of it.
		realBase, err1 := filepath.EvalSymlinks(base)
		realP, err2 := evalExisting(p)
		if err1 == nil && err2 == nil && !within(realBase, realP) {
			return "", outside
		}
	}
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return p, nil
	case err != nil:
		return "", failure.Bad(in.name, err.Error(), "name a path the action can write")
	}
	switch format {
	case Tarball:
		if fi.IsDir() {
			return "", failure.Bad(in.name, fmt.Sprintf("%q is a directory, and {Format} tar writes a file", raw), "name a file, e.g. images/app.tar")
		}
	case Layout:
		if !fi.IsDir() {
			return "", failure.Bad(in.name, fmt.Sprintf("%q is a file, and an OCI layout is a directory", raw), "name a new or empty directory, or an existing OCI layout to add to")
		}
		if !isLayout(p) && !isEmptyDir(p) {
			return "", failure.Bad(in.name, fmt.Sprintf("%q is a directory that is not an OCI layout (it has files but no oci-layout file)", raw), "name a new or empty directory, or an existing OCI layout to add to")
		}
	}
	return p, nil
}

func within(base, p string) bool {
	rel, err := filepath.Rel(filepath.Clean(base), p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// evalExisting resolves symlinks in the longest existing prefix of p.
func evalExisting(p string) (string, error) {
	rest := ""
	for {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(r, rest), nil
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", os.ErrNotExist
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}

func isLayout(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, "oci-layout"))
	return err == nil && fi.Mode().IsRegular()
}

func isEmptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	return errors.Is(err, io.EOF)
}

// publish makes a finished file or directory readable by the job's user:
// the action's container writes as root, later steps run as the runner.
func publish(path string, dir bool) error {
	mode := os.FileMode(0o644)
	if dir {
		mode = 0o755
	}
	return os.Chmod(path, mode)
}

// writeFileAtomic writes data to path through a synced temporary file
// renamed over it.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), tempPrefix(path))
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := publish(f.Name(), false); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
