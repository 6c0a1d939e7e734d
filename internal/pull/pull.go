// Package pull is ghcr-pull's policy: it plans images × targets, probes the
// registry for each image with the configured credentials, falls back to
// anonymous when they are rejected (and only then), and pulls into each
// target's runtime with the credentials that worked, again falling back if
// the runtime itself is refused. A target is anything that opens a Daemon;
// how it is reached (a local socket, SSH) is its opener's business, and
// pull imports no SSH or socket code.
package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// Daemon is what pull needs of a container runtime. *docker.Engine,
// *cri.ImageService, sshdeploy.Runtime and test doubles all satisfy it.
// One that also has Runtime() (name, namespace string) names itself in
// the results; one that is an io.Closer is closed when the run ends.
type Daemon interface {
	// Pull pulls ref (platform nil: the runtime's own), sending creds as
	// the call's registry auth, and reports whether anything new was
	// downloaded and progress (bytes done of total) as it goes. Its error
	// is classified with internal/failure's types.
	Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (downloaded bool, err error)
	// Inspect describes a local image.
	Inspect(ctx context.Context, ref string) (image.Info, error)
}

// tagger is a Daemon that can point a tag at an image it holds (Docker):
// such a target is pulled by the probed digest and then tagged, so it
// holds exactly what was resolved. Others (CRI has no tag call) are
// pulled by the user's reference and checked against the probed digest.
type tagger interface {
	Tag(ctx context.Context, source, target string) error
}

// renamer is a Daemon without a tag call whose images can still be given
// names (containerd, through its images service): a mirror that serves
// the digest serves it too. It pulls <mirror>/<repo>@<digest>, and Rename
// gives the image the user's names (<repository>@<digest>, the tag) in
// place of the mirror's, which it removes.
type renamer interface {
	Rename(ctx context.Context, from string, names ...string) error
}

// namer is a Daemon that names its runtime and, for containerd, the
// namespace images land in; pull copies both into each Result.
type namer interface {
	Runtime() (name, namespace string)
}

// Target is a place images are pulled into.
type Target struct {
	// Name is "local" for the runner's daemon, else the host address.
	Name string
	// Open reaches the daemon; it is called once per run, when the first
	// image is ready for this target. A returned Daemon that is also an
	// io.Closer is closed when the run ends.
	Open func(ctx context.Context) (Daemon, error)
}

// Image is one reference to pull, as the user wrote it and as parsed.
type Image struct {
	Input string
	Ref   name.Reference
}

// Options say how to pull.
type Options struct {
	Credentials registryauth.Credentials
	// Fallback allows an anonymous retry when Credentials are rejected.
	Fallback bool
	// Platform is the platform to pull; nil means each runtime's own.
	Platform *ocispec.Platform
	Retry    retry.Policy
	// ImageConcurrency bounds images in flight; TargetConcurrency bounds
	// targets in flight per image.
	ImageConcurrency  int
	TargetConcurrency int
	ProbeOptions      []ghcr.Option
	Events            Events
	// Verify, when set, checks the probed digest's signature with the
	// credentials the probe succeeded with, after the probe and before any
	// target pulls. A failure fails the image everywhere; nothing is
	// pulled.
	Verify func(ctx context.Context, digest name.Digest, creds registryauth.Credentials) (Verification, error)
	// Fleet, when set, takes every probed image onto its members (one
	// result each) in place of targets.
	Fleet Fleet
	// QuotaGuard probes every image before any target pulls, and fails
	// the images of a registry whose reported pull quota (Docker Hub's)
	// has fewer pulls left than the step needs (quota.go).
	QuotaGuard bool
	// Mirrors may serve images in place of their registry (mirror.go);
	// MirrorCredentials go to the mirrors the user listed, and to no
	// other host.
	Mirrors           mirror.Set
	MirrorCredentials registryauth.Credentials
	// Probed, when set, is told each image's pinned reference and the
	// credentials the targets will pull it with, as soon as the probe
	// (and verification) settled them and before any target pulls: a
	// route that fetches on the runner (the relay) starts its upstream
	// round trips there, while the targets are still being reached. It
	// must not block.
	Probed func(ctx context.Context, ref name.Digest, creds registryauth.Credentials)
}

// Verification is what was verified of an image before it was pulled.
type Verification struct {
	Method, Identity string
	// SignatureDigest is the digest of the signature or attestation
	// manifest that verified.
	SignatureDigest string
	// Anonymous is set when the signature could only be read anonymously
	// (the credentials were refused for it, as for a public image).
	Anonymous bool
}

// Stage is where in a pull an event happened.
type Stage int

const (
	// AtProbe is the runner's probe of the registry.
	AtProbe Stage = iota
	// AtTarget is a target's runtime pulling.
	AtTarget
)

// Events is how pull tells its caller what happens as it happens; target
// is the target's name at AtTarget, empty at AtProbe. Any method may be
// called from several goroutines.
type Events interface {
	// Fallback is called once the anonymous attempt after a rejection has
	// ended: outcome is nil when it worked, else its error.
	Fallback(img Image, stage Stage, target string, rejection, outcome error)
	Retry(img Image, stage Stage, target string, attempt int, wait time.Duration, err error)
	Progress(img Image, target string, done, total int64)
}

// Result is the outcome for one image on one target ("none" when nothing
// was pulled by choice).
type Result struct {
	Image           string
	Host            string
	AuthMode        registryauth.Mode
	Provider        string
	FallbackUsed    bool
	CredentialError string
	Digest          string
	ImageRef        string
	Platform        string
	// PlatformDigest is the manifest digest of the platform asked for, as
	// the probe resolved it; empty when no platform was given.
	PlatformDigest string
	// Runtime and Namespace say what the target pulled into (docker, or
	// containerd and its namespace), when its daemon was reached.
	Runtime   string
	Namespace string
	// Pulled is false when the target already had the image.
	Pulled   bool
	Duration time.Duration
	// Verification is set when a signature was verified.
	Verification *Verification
	// Quota is the registry's pull quota as the probe read it, before
	// this step's pulls; nil when the registry reports none.
	Quota *ghcr.Quota
	// ServedBy names the mirror the target pulled from ("" for the
	// image's own registry); ResolvedBy the mirror that resolved the
	// digest because upstream could not (down, over quota).
	ServedBy   string
	ResolvedBy string
	// MirrorNotes say what was decided about mirrors and why (one that
	// answered another digest, one that was down).
	MirrorNotes []MirrorNote
	// Err is nil on success; Diagnosis explains a failure.
	Err       error
	Diagnosis string
}

// HostNone marks results of a run that resolved without pulling.
const HostNone = "none"

// Run pulls every image onto every target (or only probes, with no
// targets), concurrently within the bounds, and returns one result per
// image and target in input order. One failure never stops the others.
func Run(ctx context.Context, images []Image, targets []Target, opts Options) []Result {
	if opts.ImageConcurrency <= 0 {
		opts.ImageConcurrency = 3
	}
	if opts.TargetConcurrency <= 0 {
		opts.TargetConcurrency = 4
	}
	if opts.Events == nil {
		opts.Events = noEvents{}
	}
	opened := make([]*openOnce, len(targets))
	for i, t := range targets {
		opened[i] = &openOnce{target: t}
	}
	defer func() {
		for _, o := range opened {
			o.close()
		}
	}()

	// Reach the targets while the registry is probed: the probe talks
	// only to the registry, and a target gets nothing (no pull, no
	// credential) until its Open returned, which for an SSH host means
	// its key verified. Opening first and probing after cost the sum of
	// both on every step.
	var og errgroup.Group
	og.SetLimit(opts.TargetConcurrency)
	for _, o := range opened {
		og.Go(func() error { _, _ = o.open(ctx); return nil })
	}
	defer og.Wait()

	perImage := make([][]Result, len(images))
	var g errgroup.Group
	g.SetLimit(opts.ImageConcurrency)
	if opts.QuotaGuard {
		// Every probe first: the guard needs every image's registry and
		// quota before the first pull spends any of it.
		probes := make([]probeOutcome, len(images))
		starts := make([]time.Time, len(images))
		for i, img := range images {
			g.Go(func() error {
				starts[i] = time.Now()
				probes[i] = probeImage(ctx, img, opts)
				return nil
			})
		}
		_ = g.Wait()
		guardQuota(ctx, images, probes, opened, opts.Fleet != nil, opts.ImageConcurrency*opts.TargetConcurrency)
		for i, img := range images {
			g.Go(func() error {
				perImage[i] = deliver(ctx, img, probes[i], opened, opts, starts[i])
				return nil
			})
		}
	} else {
		for i, img := range images {
			g.Go(func() error {
				start := time.Now()
				perImage[i] = deliver(ctx, img, probeImage(ctx, img, opts), opened, opts, start)
				return nil
			})
		}
	}
	_ = g.Wait()
	var results []Result
	for _, rs := range perImage {
		results = append(results, rs...)
	}
	return results
}

// probeImage probes once on the runner, decides which mirror serves, and
// verifies, when asked.
func probeImage(ctx context.Context, img Image, opts Options) probeOutcome {
	if len(mirrorsOf(img, opts)) == 0 {
		p := probeWithFallback(ctx, img, opts)
		if p.err == nil && opts.Verify != nil {
			p.verify(ctx, img, opts)
		}
		return p
	}
	// With mirrors, an upstream that is down or over quota is asked
	// once: a mirror answers sooner than a wait. Only when none does is
	// upstream asked again with the retry policy (Retry-After honoured).
	once := opts
	once.Retry = retry.Policy{}
	p := probeWithFallback(ctx, img, once)
	p.chooseMirror(ctx, img, opts)
	if p.err != nil && upstreamDown(p.err) && opts.Retry.Retries > 0 {
		notes := p.mirrorNotes
		p = probeWithFallback(ctx, img, opts)
		p.mirrorNotes = notes
	}
	if p.err == nil && opts.Verify != nil {
		p.verify(ctx, img, opts)
	}
	return p
}

// deliver pulls a probed image onto every target as soon as it is
// reached (or reports the probe's failure for each).
func deliver(ctx context.Context, img Image, p probeOutcome, targets []*openOnce, opts Options, start time.Time) []Result {
	if opts.Fleet != nil {
		if p.err == nil {
			return pullFleet(ctx, img, p, opts)
		}
		r := p.result(img, opts.Fleet.Name(), time.Since(start))
		r.Runtime = opts.Fleet.Runtime()
		return []Result{r}
	}
	if len(targets) == 0 {
		r := p.result(img, HostNone, time.Since(start))
		return []Result{r}
	}
	out := make([]Result, len(targets))
	if p.err == nil && opts.Probed != nil {
		if ref, creds, ok := p.pinnedSource(img); ok {
			opts.Probed(ctx, ref, creds)
		}
	}
	if p.err != nil {
		for i, t := range targets {
			if _, err := t.open(ctx); err != nil {
				out[i] = unreachable(img, t)
				continue
			}
			out[i] = p.result(img, t.target.Name, time.Since(start))
		}
		return out
	}
	var g errgroup.Group
	g.SetLimit(opts.TargetConcurrency)
	for i, t := range targets {
		g.Go(func() error {
			out[i] = pullOnto(ctx, img, t, p, opts)
			out[i].Duration = time.Since(start)
			return nil
		})
	}
	_ = g.Wait()
	return out
}

// pinnedSource is where targets that pull by digest get img, and with
// which credentials: the mirror that serves it, or the registry.
func (p probeOutcome) pinnedSource(img Image) (name.Digest, registryauth.Credentials, bool) {
	if p.source != nil {
		return p.source.ref, p.source.creds, true
	}
	ref, err := name.NewDigest(image.Pinned(img.Input, p.digest))
	if err != nil {
		return name.Digest{}, registryauth.Credentials{}, false
	}
	return ref, p.creds, true
}

// probeOutcome is what the runner-side probe decided for one image.
type probeOutcome struct {
	creds        registryauth.Credentials
	fallbackUsed bool
	rejection    error
	digest       string
	platform     string // the platform's manifest digest, with a platform
	verification *Verification
	quota        *ghcr.Quota
	source       *source // nil: targets pull from upstream
	resolvedBy   string
	mirrorNotes  []MirrorNote
	attempts     []ghcr.Attempt
	err          error
}

func probeWithFallback(ctx context.Context, img Image, opts Options) probeOutcome {
	var out probeOutcome
	probe := func(creds registryauth.Credentials) (ghcr.ProbeResult, error) {
		var res ghcr.ProbeResult
		err := retry.Do(ctx, withRetryEvents(opts, img, AtProbe, ""), func(ctx context.Context) error {
			r, err := ghcr.Probe(ctx, img.Ref, creds, append(opts.ProbeOptions, ghcr.WithPlatform(opts.Platform))...)
			res = r
			return err
		})
		out.attempts = append(out.attempts, ghcr.Attempt{Mode: creds.Mode, Err: err})
		return res, err
	}

	creds := opts.Credentials
	if creds.IsAnonymous() {
		creds = registryauth.Anonymous
	}
	res, err := probe(creds)
	var rej *failure.Rejected
	if err != nil && errors.As(err, &rej) && !creds.IsAnonymous() && opts.Fallback {
		out.rejection = err
		out.fallbackUsed = true
		creds = registryauth.Anonymous
		res, err = probe(creds)
		opts.Events.Fallback(img, AtProbe, "", out.rejection, err)
	}
	if err == nil {
		// Runtimes that can (Docker) get this short-lived, pull-scoped
		// token instead of the secret. An anonymous token is passed on
		// too: each daemon then skips its own token round trip.
		creds.RegistryToken = res.Token
	}
	out.creds = creds
	out.quota = res.Quota
	out.digest = res.Digest
	out.platform = res.PlatformDigest
	out.err = err
	return out
}

// verify checks the probed digest's signature; a failure becomes the
// image's failure. Signatures live in the same registry as the image, so
// the same credentials and the same fallback apply.
func (p *probeOutcome) verify(ctx context.Context, img Image, opts Options) {
	digest := img.Ref.Context().Digest(p.digest)
	creds := p.creds
	creds.RegistryToken = ""
	v, err := opts.Verify(ctx, digest, creds)
	var rej *failure.Rejected
	if err != nil && errors.As(err, &rej) && !creds.IsAnonymous() && opts.Fallback {
		rejection := err
		v, err = opts.Verify(ctx, digest, registryauth.Anonymous)
		v.Anonymous = err == nil
		opts.Events.Fallback(img, AtProbe, "", rejection, err)
	}
	if err != nil {
		p.err = fmt.Errorf("signature verification of %s failed: %w", digest, err)
		p.attempts = append(p.attempts, ghcr.Attempt{Mode: creds.Mode, Err: p.err})
		return
	}
	p.verification = &v
}

func (p probeOutcome) result(img Image, host string, d time.Duration) Result {
	r := Result{
		Image:        img.Input,
		Host:         host,
		AuthMode:     p.creds.Mode,
		Provider:     p.creds.Provider,
		FallbackUsed: p.fallbackUsed,
		Digest:       p.digest,
		Duration:     d,
		Quota:        p.quota,
		ResolvedBy:   p.resolvedBy,
		MirrorNotes:  p.mirrorNotes,
		Err:          p.err,
	}
	if p.resolvedBy != "" && p.source != nil {
		r.AuthMode, r.Provider = p.source.creds.Mode, ""
	}
	if p.rejection != nil {
		r.CredentialError = rejectionText(p.rejection)
	}
	if p.err == nil && p.digest != "" {
		r.ImageRef = image.Pinned(img.Input, p.digest)
		r.PlatformDigest = p.platform
		r.Verification = p.verification
	}
	if p.err != nil {
		r.AuthMode, r.Digest = "", ""
		r.Diagnosis = ghcr.Diagnose(img.Ref.Context().RegistryStr(), p.attempts)
	}
	return r
}

// failed turns r into a failure: a failed result carries no digest,
// reference, auth mode or verification it did not deliver.
func (r Result) failed(err error, diagnosis string) Result {
	r.AuthMode, r.Err, r.ImageRef, r.Digest, r.PlatformDigest, r.Diagnosis = "", err, "", "", "", diagnosis
	r.Verification = nil
	return r
}

// unreachable is the result for a target whose daemon could not be opened.
func unreachable(img Image, t *openOnce) Result {
	return Result{Image: img.Input, Host: t.target.Name, Err: t.err,
		Diagnosis: fmt.Sprintf("could not reach the daemon on %s: %v", t.target.Name, t.err)}
}

// pullOnto pulls one image into one target with the probe's credentials.
func pullOnto(ctx context.Context, img Image, t *openOnce, p probeOutcome, opts Options) Result {
	d, err := t.open(ctx)
	if err != nil {
		return unreachable(img, t)
	}
	res := p.result(img, t.target.Name, 0)
	if rr, ok := d.(namer); ok {
		res.Runtime, res.Namespace = rr.Runtime()
	}
	attempts := append([]ghcr.Attempt(nil), p.attempts...)
	// Resolve once, pin everywhere: a target that can tag pulls the
	// probed digest itself, so a tag pushed after the probe cannot reach
	// it; the user's tag is then pointed at that digest.
	ref := img.Input
	tg, canTag := d.(tagger)
	rn, canRename := d.(renamer)
	pinned := ""
	if p.digest != "" {
		pinned = image.Pinned(img.Input, p.digest)
	}
	byDigest := canTag && pinned != ""
	if byDigest {
		ref = pinned
	}
	// A mirror serves targets that can tag (Docker: they pull
	// <mirror>/<repo>@<digest> and get the user's tag) or rename
	// (containerd: the same pull, then the user's names in place of the
	// mirror's). Other targets pull the user's reference from the
	// registry.
	src := p.source
	if pinned == "" || !(canTag || canRename) {
		src = nil
	}
	upstreamRef := ref
	creds := p.creds
	if src != nil {
		ref, creds = src.ref.String(), src.creds
		res.ServedBy = src.mirror.String()
		res.AuthMode, res.Provider = creds.Mode, ""
	}
	pullWith := func(creds registryauth.Credentials) (bool, error) {
		var downloaded bool
		err := retry.Do(ctx, withRetryEvents(opts, img, AtTarget, t.target.Name), func(ctx context.Context) error {
			var err error
			downloaded, err = d.Pull(ctx, ref, opts.Platform, creds, func(done, total int64) {
				opts.Events.Progress(img, t.target.Name, done, total)
			})
			if src == nil {
				// The registry's quota ran out during the step: name
				// it, and wait only for a Retry-After.
				err = ghcr.OverQuota(err, p.quota)
			}
			return err
		})
		attempts = append(attempts, ghcr.Attempt{Mode: creds.Mode, Err: err, Target: t.target.Name})
		return downloaded, err
	}

	downloaded, err := pullWith(creds)
	var rej *failure.Rejected
	// credential-error reports the daemon's answer to the credentials
	// themselves, not to a token retry.
	rejection := err
	if err != nil && errors.As(err, &rej) && creds.RegistryToken != "" && src == nil {
		// Registry tokens live about 300 s: one that expired before or
		// during the pull is replaced by a fresh one, never by the
		// password.
		if tok, ok := freshToken(ctx, img, creds, opts); ok {
			creds.RegistryToken = tok
			downloaded, err = pullWith(creds)
		}
	}
	// The probe accepted the credentials, but the daemon may reach the
	// registry differently (its own mirror or proxy settings, a token
	// that expired in between): fall back here too.
	if err != nil && errors.As(err, &rej) && !creds.IsAnonymous() && opts.Fallback {
		if !errors.As(rejection, &rej) {
			rejection = err
		}
		res.FallbackUsed = true
		res.CredentialError = rejectionText(rejection)
		creds = registryauth.Anonymous
		downloaded, err = pullWith(creds)
		opts.Events.Fallback(img, AtTarget, t.target.Name, rejection, err)
	}
	// A mirror that served the probe but fails this target leaves it to
	// upstream, when upstream resolved the digest itself.
	if err != nil && src != nil && p.resolvedBy == "" {
		res.MirrorNotes = append(res.MirrorNotes, MirrorNote{Text: fmt.Sprintf("the pull from mirror %s failed on %s (%v); pulled from upstream", src.mirror, t.target.Name, err)})
		ref, creds, src = upstreamRef, p.creds, nil
		res.ServedBy, res.AuthMode, res.Provider = "", creds.Mode, p.creds.Provider
		downloaded, err = pullWith(creds)
	}
	res.AuthMode = creds.Mode
	if creds.IsAnonymous() {
		res.Provider = ""
	}
	if err != nil {
		return res.failed(err, ghcr.Diagnose(img.Ref.Context().RegistryStr(), attempts))
	}
	res.Pulled = downloaded
	// A mirror's pull is renamed where the target can (containerd): the
	// user's names in place of the mirror's. Docker keeps the mirror's
	// repository in RepoDigests and is tagged.
	renamed := src != nil && canRename
	if renamed {
		names := []string{pinned}
		if _, isTag := img.Ref.(name.Tag); isTag {
			names = append(names, img.Input)
		}
		if err := rn.Rename(ctx, ref, names...); err != nil {
			err = fmt.Errorf("pulled %s, but naming it %s failed: %w", ref, strings.Join(names, " and "), err)
			return res.failed(err, err.Error())
		}
	}
	if byDigest && ref != img.Input && !renamed {
		if _, isTag := img.Ref.(name.Tag); isTag {
			if err := tg.Tag(ctx, ref, img.Input); err != nil {
				err = fmt.Errorf("pulled %s, but pointing %s at it failed: %w", ref, img.Input, err)
				return res.failed(err, err.Error())
			}
		}
	}
	info, err := d.Inspect(ctx, img.Input)
	if err != nil {
		err = fmt.Errorf("pulled, but inspecting %s failed: %w", img.Input, err)
		return res.failed(err, err.Error())
	}
	if opts.Platform != nil && info.Platform != nil && !image.SamePlatform(*opts.Platform, *info.Platform) {
		err := failure.Bad("platform",
			fmt.Sprintf("%s on %s is %s, not the %s asked for (the image has no manifest for that platform)", img.Input, t.target.Name, info.PlatformString(), image.FormatPlatform(*opts.Platform)),
			"pick a platform the image provides, or leave platform empty")
		return res.failed(err, err.Error())
	}
	res.Platform = info.PlatformString()
	pulledAs := img.Input
	if src != nil && !renamed {
		pulledAs = ref // Docker's RepoDigests name the mirror's repository
	}
	got := info.Digest(pulledAs, p.digest)
	if p.digest != "" && got != p.digest {
		err := &DriftError{Image: img.Input, Target: t.target.Name, Expected: p.digest, Got: got}
		return res.failed(err, err.Error())
	}
	if got != "" {
		res.Digest = got
	}
	res.ImageRef = image.Pinned(img.Input, res.Digest)
	if info.Ref != "" {
		res.ImageRef = info.Ref
	}
	return res
}

// DriftError: a target ended up with another image than the probe
// resolved (the tag was pushed in between). The step fails for that
// target rather than report one digest for a split fleet.
type DriftError struct {
	Image, Target string
	Expected, Got string
}

// Class names the drift for failure.ClassOf (results' error_class).
func (e *DriftError) Class() string { return "drift" }

func (e *DriftError) Error() string {
	got := e.Got
	if got == "" {
		got = "no digest of that repository"
	}
	return fmt.Sprintf("%s drifted on %s: the probe resolved %s, but the target holds %s (the tag moved between the probe and this pull); run the step again, or pin the image by digest", e.Image, e.Target, e.Expected, got)
}

// freshToken probes again with creds to get a new registry token.
func freshToken(ctx context.Context, img Image, creds registryauth.Credentials, opts Options) (string, bool) {
	creds.RegistryToken = ""
	res, err := ghcr.Probe(ctx, img.Ref, creds, opts.ProbeOptions...)
	return res.Token, err == nil && res.Token != ""
}

func withRetryEvents(opts Options, img Image, stage Stage, target string) retry.Policy {
	p := opts.Retry
	p.OnRetry = func(attempt int, wait time.Duration, err error) {
		opts.Events.Retry(img, stage, target, attempt, wait, err)
	}
	return p
}

// rejectionText is the credential-error output: the registry's own answer.
func rejectionText(err error) string {
	var rej *failure.Rejected
	if errors.As(err, &rej) {
		return rej.Response.String()
	}
	return err.Error()
}

// openOnce opens a target's daemon at most once per run.
type openOnce struct {
	target Target
	once   sync.Once
	daemon Daemon
	err    error
}

func (o *openOnce) open(ctx context.Context) (Daemon, error) {
	o.once.Do(func() { o.daemon, o.err = o.target.Open(ctx) })
	return o.daemon, o.err
}

func (o *openOnce) close() {
	if c, ok := o.daemon.(io.Closer); ok {
		_ = c.Close()
	}
}

type noEvents struct{}

func (noEvents) Fallback(Image, Stage, string, error, error)           {}
func (noEvents) Retry(Image, Stage, string, int, time.Duration, error) {}
func (noEvents) Progress(Image, string, int64, int64)                  {}

// ParseImages parses the entries of the image input into references,
// dropping blanks and repeats. The error names the input and the entry.
func ParseImages(entries []string) ([]Image, error) {
	var out []Image
	seen := map[string]bool{}
	for _, f := range entries {
		f = strings.TrimSpace(f)
		if f == "" || seen[f] {
			continue
		}
		seen[f] = true
		ref, err := name.ParseReference(f)
		if err != nil {
			return nil, failure.Bad("image", fmt.Sprintf("%q is not an image reference: %v", f, err),
				"write images as registry/owner/name:tag or registry/owner/name@sha256:<digest>")
		}
		if _, err := reference.ParseNormalizedNamed(f); err != nil {
			return nil, failure.Bad("image", fmt.Sprintf("%q is not an image reference the Docker daemon accepts: %v", f, err),
				"use lower-case repository names")
		}
		out = append(out, Image{Input: f, Ref: ref})
	}
	if len(out) == 0 {
		return nil, failure.Bad("image", "no image given", "set image to one or more references, e.g. ghcr.io/owner/app:1.2.3")
	}
	return out, nil
}
