// Package ghcr is the registry dialect: it probes a registry with the
// credentials before anything is pulled (digest, platform, a scoped pull
// token, Docker Hub's quota), and explains a failure in terms a workflow
// author can act on. GHCR's quirks get special care, but nothing here is
// specific to ghcr.io beyond the diagnosis text. What is sent to a
// registry (registryauth) and what its answers mean (failure.FromRegistry)
// live below it, so the runtime adapters never import it.
package ghcr

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ProbeResult is what a successful probe learned: the registry accepts these
// credentials for this reference, and serves it under Digest.
type ProbeResult struct {
	Digest    string
	MediaType string
	// Token is the bearer token the registry issued for the pull scope
	// in exchange for the credentials sent, or to nobody in particular
	// for an anonymous probe (a public repository's pull token: no secret
	// of the user's, handed to Docker daemons so that each skips its own
	// token request); empty when the registry issued none (Basic-only
	// registries).
	Token string
	// PlatformDigest is the manifest digest of the platform asked for
	// (WithPlatform), resolved from the index; empty without a platform.
	PlatformDigest string
	// Requests is how many HTTP round trips the probe took (ping, token,
	// manifest HEAD: 3 against a token-auth registry).
	Requests int
	// Quota is the pull quota the registry reported on the manifest
	// answer (Docker Hub), nil when it reported none.
	Quota *Quota
}

// Option configures Probe.
type Option func(*probeOptions)

type probeOptions struct {
	platform  *ocispec.Platform
	transport http.RoundTripper
	mask      func(string)
	userAgent string
	insecure  map[string]bool
}

// WithInsecureRegistries allows plain HTTP to these host[:port]s besides
// loopback. go-containerregistry would otherwise also fall back to HTTP for
// any private-range address, where a network attacker could then read the
// credentials.
func WithInsecureRegistries(hosts ...string) Option {
	return func(o *probeOptions) {
		if o.insecure == nil {
			o.insecure = map[string]bool{}
		}
		for _, h := range hosts {
			o.insecure[h] = true
		}
	}
}

// WithPlatform makes the probe resolve the platform too: an index must
// hold a manifest for it, and a single manifest's config must name it.
// Without it a probe would pass for a platform no pull can get ("no
// matching manifest"), which is a false pass for a resolve-only step.
func WithPlatform(p *ocispec.Platform) Option {
	return func(o *probeOptions) { o.platform = p }
}

// WithTransport sets the HTTP transport (tests, proxies, fault injection).
func WithTransport(rt http.RoundTripper) Option {
	return func(o *probeOptions) { o.transport = rt }
}

// WithMask is called with every token the registry hands back, before
// anything else can see it, so the action can mask it in the log.
func WithMask(mask func(string)) Option {
	return func(o *probeOptions) { o.mask = mask }
}

// WithUserAgent names the client to the registry.
func WithUserAgent(ua string) Option {
	return func(o *probeOptions) { o.userAgent = ua }
}

// Probe checks, without pulling anything, that creds can read ref: ping,
// token for the exact pull scope, manifest HEAD. One attempt, no retries
// (the caller owns the retry policy); its error is already classified.
func Probe(ctx context.Context, ref name.Reference, creds registryauth.Credentials, opts ...Option) (ProbeResult, error) {
	o := probeOptions{transport: remote.DefaultTransport, userAgent: "ghcr-pull"}
	for _, opt := range opts {
		opt(&o)
	}
	obs := &observer{inner: o.transport, mask: o.mask, insecure: o.insecure, keepAnyToken: creds.IsAnonymous()}
	desc, err := remote.Head(ref,
		remote.WithContext(ctx),
		remote.WithAuth(creds.Authenticator()),
		remote.WithTransport(obs),
		remote.WithUserAgent(o.userAgent),
		// ggcr would retry 5xx/429 three times on its own, invisibly and
		// without Retry-After; internal/retry does it in the open instead.
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
		remote.WithRetryStatusCodes(),
		remote.WithRetryPredicate(func(error) bool { return false }),
	)
	classify := func(err error) error {
		cerr := failure.FromRegistry(err, creds.IsAnonymous())
		if te, ok := cerr.(*failure.Transient); ok && te.RetryAfter == 0 {
			te.RetryAfter = obs.retryAfter()
		}
		return OverQuota(cerr, obs.quotaOf(ref.Context().RegistryStr()))
	}
	if err != nil {
		return ProbeResult{Requests: int(obs.requests.Load()), Quota: obs.quotaOf(ref.Context().RegistryStr())}, classify(err)
	}
	res := ProbeResult{Digest: desc.Digest.String(), MediaType: string(desc.MediaType)}
	if o.platform != nil {
		pd, err := resolvePlatform(ref.Context().Digest(res.Digest), desc.MediaType, *o.platform,
			remote.WithContext(ctx), remote.WithAuth(creds.Authenticator()), remote.WithTransport(obs), remote.WithUserAgent(o.userAgent),
			remote.WithRetryBackoff(remote.Backoff{Steps: 1}), remote.WithRetryStatusCodes(), remote.WithRetryPredicate(func(error) bool { return false }))
		if err != nil {
			var bad *failure.BadInput
			if !errors.As(err, &bad) {
				err = classify(err)
			}
			return ProbeResult{Requests: int(obs.requests.Load())}, err
		}
		res.PlatformDigest = pd
	}
	res.Requests = int(obs.requests.Load())
	res.Quota = obs.quotaOf(ref.Context().RegistryStr())
	obs.mu.Lock()
	res.Token = obs.token
	obs.mu.Unlock()
	return res, nil
}

// resolvePlatform finds want's manifest digest under ref: in an index, the
// entry for want; for a single manifest, the manifest itself when its
// config names want.
func resolvePlatform(ref name.Digest, mt types.MediaType, want ocispec.Platform, opts ...remote.Option) (string, error) {
	wantV1 := v1.Platform{OS: want.OS, Architecture: want.Architecture, Variant: want.Variant}
	notThere := func(have []string) error {
		return failure.Bad("platform",
			fmt.Sprintf("no matching manifest for %s in %s: it has %s", image.FormatPlatform(want), ref.Context(), strings.Join(have, ", ")),
			"pick a platform the image provides, or leave platform empty")
	}
	if mt.IsIndex() {
		idx, err := remote.Index(ref, opts...)
		if err != nil {
			return "", err
		}
		m, err := idx.IndexManifest()
		if err != nil {
			return "", err
		}
		var have []string
		for _, d := range m.Manifests {
			if d.Platform == nil {
				continue
			}
			got := ocispec.Platform{OS: d.Platform.OS, Architecture: d.Platform.Architecture, Variant: d.Platform.Variant}
			if d.Platform.Satisfies(wantV1) || image.SamePlatform(want, got) {
				return d.Digest.String(), nil
			}
			have = append(have, image.FormatPlatform(got))
		}
		return "", notThere(have)
	}
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return "", err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	got := ocispec.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if !image.SamePlatform(want, got) {
		return "", notThere([]string{image.FormatPlatform(got)})
	}
	return ref.DigestStr(), nil
}

// Transport is the transport every registry request of a run should use,
// as the probe does: plain HTTP refused off loopback and the insecure list,
// tokens masked as they arrive. Signature fetches (internal/verify) use it.
func Transport(opts ...Option) http.RoundTripper {
	o := probeOptions{transport: remote.DefaultTransport}
	for _, opt := range opts {
		opt(&o)
	}
	return &observer{inner: o.transport, mask: o.mask, insecure: o.insecure}
}

// observer counts round trips, remembers the last Retry-After, and masks
// tokens in token-endpoint answers as they pass.
type observer struct {
	inner    http.RoundTripper
	mask     func(string)
	insecure map[string]bool
	requests atomic.Int64
	// keepAnyToken keeps the token of an answer to a request without
	// credentials too: an anonymous probe's own pull token.
	keepAnyToken bool

	mu    sync.Mutex
	after time.Duration
	token string // from a token answer to a request that sent credentials (any, with keepAnyToken)
	quota *Quota // the last quota a registry answer reported
}

func (o *observer) RoundTrip(req *http.Request) (*http.Response, error) {
	// The error names the setting as WithInsecureRegistries does; the
	// caller names it as its users know it (as {Mirrors}, {QuotaGuard} and
	// {PullLocal} in quota.go's and diagnose.go's advice).
	if req.URL.Scheme == "http" && !o.insecure[req.URL.Host] && !IsLoopback(req.URL.Hostname()) {
		return nil, failure.Bad("InsecureRegistries",
			"refusing plain HTTP to "+req.URL.Host+" (only loopback registries are reached without TLS by default)",
			"serve the registry over TLS, or list "+req.URL.Host+" in {InsecureRegistries}")
	}
	resp, err := o.inner.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	o.requests.Add(1)
	if ra := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ra > 0 {
		o.mu.Lock()
		o.after = ra
		o.mu.Unlock()
	}
	if q := ParseQuota(resp.Header); q != nil && strings.HasPrefix(req.URL.Path, "/v2/") {
		o.mu.Lock()
		o.quota = q
		o.mu.Unlock()
	}
	if resp.StatusCode == http.StatusOK && !strings.HasPrefix(req.URL.Path, "/v2/") {
		o.readTokens(resp, o.keepAnyToken || req.Header.Get("Authorization") != "" || req.Method == http.MethodPost)
	}
	return resp, nil
}

// quotaOf is a copy of the last quota seen, named for registry; nil when
// no answer carried one.
func (o *observer) quotaOf(registry string) *Quota {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.quota == nil {
		return nil
	}
	q := *o.quota
	q.Registry = registry
	return &q
}

func (o *observer) retryAfter() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.after
}

// IsLoopback says whether host (a URL's Hostname) names this machine:
// "localhost" or a loopback IP literal. Only such hosts may be spoken to
// without TLS unless the user says otherwise; a name that merely starts
// like one (127.example.com) does not count.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// maxTokenBody bounds how much of a token answer is buffered for masking.
const maxTokenBody = 1 << 20

// readTokens masks every token in a token-endpoint answer before anyone
// else sees it, and keeps the bearer token when credentials bought it.
func (o *observer) readTokens(resp *http.Response, withCredentials bool) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBody))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return
	}
	var tok struct {
		Token        string `json:"token"`
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if json.Unmarshal(body, &tok) != nil {
		return
	}
	masked := map[string]bool{}
	for _, s := range []string{tok.Token, tok.AccessToken, tok.RefreshToken} {
		if s != "" && !masked[s] && o.mask != nil {
			masked[s] = true
			o.mask(s)
		}
	}
	if withCredentials {
		o.mu.Lock()
		o.token = cmp.Or(tok.Token, tok.AccessToken)
		o.mu.Unlock()
	}
}

// ParseRetryAfter reads a Retry-After header in either of its RFC 9110
// forms, delay-seconds or an HTTP-date. Zero means none or unparseable.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0
		}
		// A day is more than anyone waits; beyond it the multiplication
		// would overflow (found by FuzzParseRetryAfter).
		return time.Duration(min(secs, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
