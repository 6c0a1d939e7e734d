// Package mirror says which registries may serve an image in place of the
// one its reference names: the mirrors input, parsed once, and the
// mirrors the runner's Docker daemon is configured with. It only names
// them; internal/pull decides, per image after the probe, which one serves
// (a mirror is used only for the exact digest upstream resolved).
package mirror

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Mirror is a registry that may serve another registry's repositories.
type Mirror struct {
	// Host is the mirror's host[:port].
	Host string
	// Prefix is a path the mirror keeps the upstream repositories under
	// (Harbor's and Artifactory's proxy projects), "" for none.
	Prefix string
	// PlainHTTP is set when the user wrote http://: the runner may reach
	// it without TLS (the daemons need their own insecure-registries).
	PlainHTTP bool
	// FromDaemon marks a mirror read from the runner's daemon
	// (registry-mirrors in daemon.json), which serves Docker Hub only.
	FromDaemon bool
}

// String is the mirror as results and the summary name it.
func (m Mirror) String() string {
	if m.Prefix == "" {
		return m.Host
	}
	return m.Host + "/" + m.Prefix
}

// Ref is repo's image on the mirror, by digest:
// <mirror>[/<prefix>]/<repository>@<digest>.
func (m Mirror) Ref(repo name.Repository, digest string) (name.Digest, error) {
	path, opts := m.repository(repo)
	return name.NewDigest(path+"@"+digest, opts...)
}

// Tagged is repo's tag on the mirror, to ask which digest it serves.
func (m Mirror) Tagged(repo name.Repository, tag string) (name.Tag, error) {
	path, opts := m.repository(repo)
	return name.NewTag(path+":"+tag, opts...)
}

// repository is repo on the mirror, <mirror>[/<prefix>]/<repository>, and
// the options that name it (plain HTTP when the mirror was written so).
func (m Mirror) repository(repo name.Repository) (string, []name.Option) {
	path := repo.RepositoryStr()
	if m.Prefix != "" {
		path = m.Prefix + "/" + path
	}
	var opts []name.Option
	if m.PlainHTTP {
		opts = append(opts, name.Insecure)
	}
	return m.Host + "/" + path, opts
}

// Set is the mirrors of each registry (as go-containerregistry names it:
// Docker Hub is index.docker.io), in the order they are tried.
type Set map[string][]Mirror

// For lists registry's mirrors in order.
func (s Set) For(registry string) []Mirror { return s[canonical(registry)] }

// Add appends mirrors of registry after those already listed, skipping
// repeats (a daemon mirror also given in the input keeps its place).
func (s Set) Add(registry string, ms ...Mirror) {
	r := canonical(registry)
	for _, m := range ms {
		dup := false
		for _, have := range s[r] {
			dup = dup || (have.Host == m.Host && have.Prefix == m.Prefix)
		}
		if !dup {
			s[r] = append(s[r], m)
		}
	}
}

// canonical names a registry as go-containerregistry does, so docker.io,
// registry-1.docker.io and index.docker.io are one key.
func canonical(registry string) string {
	registry = strings.ToLower(strings.TrimSpace(registry))
	if registry == "registry-1.docker.io" || registry == "docker.io" {
		return name.DefaultRegistry
	}
	return registry
}

// Parse reads the mirrors input: one "<registry>=<mirror>" per line (or
// comma-separated), in the order to try them; a registry may have several
// lines. A mirror is host[:port][/prefix], optionally with https:// (the
// default) or http:// (plain HTTP, allowed by writing it).
//
//	docker.io=mirror.gcr.io
//	docker.io=https://harbor.example.com/dockerhub-proxy
//	ghcr.io=ghcr-cache.internal:5000
func Parse(input string) (Set, error) {
	s := Set{}
	for _, line := range strings.FieldsFunc(input, func(r rune) bool { return r == '\n' || r == '\r' || r == ',' }) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		reg, target, ok := strings.Cut(line, "=")
		reg, target = strings.TrimSpace(reg), strings.TrimSpace(target)
		if !ok || reg == "" || target == "" {
			return nil, failure.Bad(setting, fmt.Sprintf("%q is not <registry>=<mirror>", failure.Clip(line)), syntax)
		}
		if strings.ContainsAny(reg, "/:@ ") && !validHostPort(reg) {
			return nil, failure.Bad(setting, fmt.Sprintf("%q in %q is not a registry host", reg, line), syntax)
		}
		if _, err := name.NewRepository(reg + "/library/x"); err != nil {
			return nil, failure.Bad(setting, fmt.Sprintf("%q in %q is not a registry host: %v", reg, line, err), syntax)
		}
		m, err := parseMirror(target)
		if err != nil {
			return nil, failure.Bad(setting, fmt.Sprintf("%q in %q: %v", target, line, err), syntax)
		}
		if canonical(m.Host) == canonical(reg) && m.Prefix == "" {
			return nil, failure.Bad(setting, fmt.Sprintf("%q names %s as its own mirror", line, reg), syntax)
		}
		s.Add(reg, m)
	}
	return s, nil
}

func validHostPort(s string) bool {
	u, err := url.Parse("//" + s)
	return err == nil && u.Host == s && u.Path == ""
}

// parseMirror reads host[:port][/prefix] with an optional scheme.
func parseMirror(s string) (Mirror, error) {
	var m Mirror
	switch {
	case strings.HasPrefix(s, "https://"):
		s = strings.TrimPrefix(s, "https://")
	case strings.HasPrefix(s, "http://"):
		s, m.PlainHTTP = strings.TrimPrefix(s, "http://"), true
	case strings.Contains(s, "://"):
		return m, fmt.Errorf("only https:// and http:// mirrors exist")
	}
	s = strings.TrimRight(s, "/")
	host, prefix, _ := strings.Cut(s, "/")
	if host == "" || !validHostPort(host) || strings.ContainsAny(s, "@?# ") {
		return m, fmt.Errorf("not host[:port][/prefix]")
	}
	// go-containerregistry's registry check is lax ("!0" passes); a
	// repository under the host is what a mirror must make.
	if _, err := name.NewRepository(host + "/library/x"); err != nil {
		return m, fmt.Errorf("%q is not a registry host: %v", host, err)
	}
	if prefix != "" {
		if _, err := name.NewRepository(host + "/" + prefix + "/library/x"); err != nil {
			return m, fmt.Errorf("the prefix %q is not a repository path: %v", prefix, err)
		}
	}
	m.Host, m.Prefix = strings.ToLower(host), prefix
	return m, nil
}

// FromDaemon turns a daemon's registry-mirrors (the Engine API's
// RegistryConfig.Mirrors, URLs like "https://mirror.gcr.io/") into
// mirrors of Docker Hub, the only registry dockerd mirrors. Entries that
// do not parse are skipped: the daemon accepted them, and they are not
// the user's input here.
func FromDaemon(urls []string) []Mirror {
	var out []Mirror
	for _, u := range urls {
		m, err := parseMirror(strings.TrimSpace(u))
		if err != nil {
			continue
		}
		m.FromDaemon = true
		out = append(out, m)
	}
	return out
}

// DockerHub is the registry daemon mirrors serve.
const DockerHub = name.DefaultRegistry

// setting is how Parse's errors name what they concern; the caller names
// it as its users know it.
const setting = "Mirrors"

// syntax is the fix for every mistake in the mirrors input.
const syntax = "write one <registry>=<mirror> per line, e.g. docker.io=mirror.gcr.io"
