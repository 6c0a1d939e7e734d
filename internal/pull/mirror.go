package pull

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// MirrorNote is one thing decided about a mirror for an image, and why.
type MirrorNote struct {
	Text string
	// Distrusted: the mirror answered another digest than upstream's and
	// was not used, a warning rather than news.
	Distrusted bool
}

func (n MirrorNote) String() string { return n.Text }

// source is the mirror an image's targets pull from, decided once per
// image after the probe; a nil *source is the upstream registry.
type source struct {
	mirror mirror.Mirror
	// ref is the image on the mirror by the digest the targets must get.
	ref name.Digest
	// creds are the mirror's own (or none), never the upstream's.
	creds registryauth.Credentials
}

// mirrorsOf lists the mirrors that may serve img.
func mirrorsOf(img Image, opts Options) []mirror.Mirror {
	return opts.Mirrors.For(img.Ref.Context().RegistryStr())
}

// credsFor is what a mirror is sent: the mirror credentials for the
// mirrors the user listed, nothing for the daemon's own.
func credsFor(m mirror.Mirror, opts Options) registryauth.Credentials {
	if m.FromDaemon || opts.MirrorCredentials.IsAnonymous() {
		return registryauth.Anonymous
	}
	return opts.MirrorCredentials
}

// upstreamDown says whether a probe failure is one a mirror may stand in
// for: the registry unreachable (its name unresolvable included),
// failing, or over its pull quota. A rejection or a missing image is the
// registry's word, and a mirror must not overrule it.
func upstreamDown(err error) bool {
	var (
		qe *ghcr.QuotaExceeded
		tr *failure.Transient
		nh *failure.NoSuchHost
	)
	return errors.As(err, &qe) || errors.As(err, &tr) || errors.As(err, &nh)
}

// chooseMirror picks, after the probe, the first mirror that serves the
// digest upstream resolved; when upstream could not answer (down, over
// quota), the first mirror that answers resolves it. A mirror that
// answers another digest for the tag than upstream is never used, and
// the results say so.
func (p *probeOutcome) chooseMirror(ctx context.Context, img Image, opts Options) {
	mirrors := mirrorsOf(img, opts)
	if len(mirrors) == 0 || (p.err != nil && !upstreamDown(p.err)) {
		return
	}
	repo := img.Ref.Context()
	for _, m := range mirrors {
		creds := credsFor(m, opts)
		digest, res, err := p.askMirror(ctx, img, m, creds, opts)
		if err != nil {
			p.mirrorNotes = append(p.mirrorNotes, MirrorNote{Text: fmt.Sprintf("mirror %s did not serve %s: %v", m, img.Input, err)})
			continue
		}
		if p.err == nil && digest != p.digest {
			p.mirrorNotes = append(p.mirrorNotes, MirrorNote{Text: fmt.Sprintf("mirror %s answers %s for %s, but upstream resolved %s: not trusted, not used", m, digest, img.Input, p.digest), Distrusted: true})
			continue
		}
		ref, err := m.Ref(repo, digest)
		if err != nil {
			p.mirrorNotes = append(p.mirrorNotes, MirrorNote{Text: fmt.Sprintf("mirror %s: %v", m, err)})
			continue
		}
		if p.err != nil {
			p.mirrorNotes = append(p.mirrorNotes, MirrorNote{Text: fmt.Sprintf("upstream could not resolve %s (%v); mirror %s resolved it to %s, unchecked against upstream", img.Input, p.err, m, digest)})
			p.resolvedBy = m.String()
			p.digest, p.platform, p.err = digest, res.PlatformDigest, nil
		}
		// An anonymous probe returns the mirror's anonymous pull token too
		// (ghcr.Probe); it stays here: a daemon mirror (FromDaemon) may send
		// the daemon's pull to upstream, which did not issue it.
		if !creds.IsAnonymous() {
			creds.RegistryToken = res.Token
		}
		p.source = &source{mirror: m, ref: ref, creds: creds}
		return
	}
}

// askMirror asks m which digest it serves for img: by tag, and when the
// mirror lacks the tag (a pull-through cache that has not seen it), by
// the upstream digest. One attempt each: a mirror is optional, and
// upstream remains.
func (p *probeOutcome) askMirror(ctx context.Context, img Image, m mirror.Mirror, creds registryauth.Credentials, opts Options) (string, ghcr.ProbeResult, error) {
	probeOpts := append(append([]ghcr.Option(nil), opts.ProbeOptions...), ghcr.WithPlatform(opts.Platform))
	if m.PlainHTTP {
		probeOpts = append(probeOpts, ghcr.WithInsecureRegistries(m.Host))
	}
	repo := img.Ref.Context()
	byDigest := func(d string) (string, ghcr.ProbeResult, error) {
		ref, err := m.Ref(repo, d)
		if err != nil {
			return "", ghcr.ProbeResult{}, err
		}
		res, err := ghcr.Probe(ctx, ref, creds, probeOpts...)
		return res.Digest, res, err
	}
	if d, ok := img.Ref.(name.Digest); ok {
		return byDigest(d.DigestStr())
	}
	tag, err := m.Tagged(repo, img.Ref.Identifier())
	if err != nil {
		return "", ghcr.ProbeResult{}, err
	}
	res, err := ghcr.Probe(ctx, tag, creds, probeOpts...)
	var nf *failure.NotFound
	if errors.As(err, &nf) && p.err == nil {
		return byDigest(p.digest)
	}
	return res.Digest, res, err
}
