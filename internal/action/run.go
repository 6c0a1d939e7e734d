package action

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sethvargo/go-githubactions"

	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/imagefile"
	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/relay"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
)

// Env is the process's world, injectable for tests.
type Env struct {
	Getenv func(string) string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Metadata is action.yml, embedded in the binary.
	Metadata []byte
}

// Exit codes.
const (
	ExitOK       = 0
	ExitFailed   = 1
	ExitBadInput = 2
)

// Run is the whole program for one invocation: in GitHub Actions (no
// arguments, GITHUB_ACTIONS=true) it reads INPUT_*; otherwise it is a
// command-line tool with flags mirroring the inputs.
func Run(ctx context.Context, args []string, env Env) (code int) {
	md, err := ParseMetadata(env.Metadata)
	if err != nil {
		fmt.Fprintf(env.Stderr, "ghcr-pull: %v\n", err)
		return ExitFailed
	}
	var rep *writer
	var get Getter
	inActions := len(args) == 0 && env.Getenv("GITHUB_ACTIONS") == "true"
	if inActions {
		rep, get = newActionsWriter(env.Stdout, env.Getenv), EnvGetter(env.Getenv)
	} else {
		tr := newTerminalWriter(env.Stdout, env.Stderr)
		g, err := flagGetter(args, env, md)
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		if err != nil {
			tr.Error("ghcr-pull: bad arguments", err.Error())
			return ExitBadInput
		}
		rep, get = tr, g
	}
	defer func() {
		// go-githubactions panics when it cannot write to the log; the
		// step must still end with an error, not a stack trace.
		if p := recover(); p != nil {
			fmt.Fprintf(env.Stderr, "ghcr-pull: internal error: %v\n", p)
			code = ExitFailed
		}
	}()

	// Masks go first, before anything could echo a secret.
	for name := range secretInputs {
		rep.Mask(get(name))
	}

	rep.MaskCredentials(strings.TrimSpace(get("username")), get("password"))

	cfg, err := ParseConfig(get, md, pathBase(env, inActions))
	if err != nil {
		rep.Error("ghcr-pull: bad input", err.Error())
		return ExitBadInput
	}
	rep.MaskCredentials(cfg.Credentials.Username, cfg.Credentials.Password)
	rep.MaskCredentials(cfg.MirrorCredentials.Username, cfg.MirrorCredentials.Password)
	if cfg.Kube != nil {
		for _, s := range cfg.Kube.Secrets() {
			rep.Mask(s)
		}
	}
	return execute(ctx, cfg, rep, env)
}

func execute(ctx context.Context, cfg Config, rep *writer, env Env) int {
	if cfg.AnonymousNotice != "" {
		rep.Notice("ghcr-pull: anonymous pull", cfg.AnonymousNotice)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	if cfg.KubeAuth != nil {
		k, err := connectKube(ctx, cfg, rep, env)
		if err != nil {
			err = named(err, clusterInputs) // kube's and the cloud's words
			rep.Error("ghcr-pull: the cluster could not be reached with kube-auth "+cfg.KubeAuth.Form, err.Error())
			var bad *failure.BadInput
			if errors.As(err, &bad) {
				return ExitBadInput
			}
			return ExitFailed
		}
		cfg.Kube = &k
	}

	if cfg.OIDC != nil {
		creds, err := deriveOIDC(ctx, cfg, rep, env)
		if err != nil {
			rep.Error("ghcr-pull: OIDC credentials could not be derived", err.Error())
			var bad *failure.BadInput
			if errors.As(err, &bad) {
				return ExitBadInput
			}
			return ExitFailed
		}
		rep.MaskCredentials(creds.Username, creds.Password)
		cfg.Credentials = creds
	}

	probeOpts := []ghcr.Option{ghcr.WithMask(rep.Mask), ghcr.WithInsecureRegistries(cfg.InsecureRegistries...)}
	var relayed func(image, host string) int64
	var cache *imageCache
	var feeds *relay.Server // the relay targets pull from (ssh-transfer: relay, cache-path), if any
	if cfg.CachePath != "" {
		var err error
		if cache, err = openCache(cfg, probeOpts); err != nil {
			rep.Error("ghcr-pull: the image cache could not be opened", err.Error())
			return ExitFailed
		}
		feeds = cache.srv
	}
	if cfg.Relay && cfg.SSH != nil {
		// With cache-path the relay is the cache's (closed, and its
		// layout pruned, once the results are in); otherwise it lives as
		// long as the step: deferred, its cache goes on success, failure
		// and cancel (the context ends, Run returns).
		var srv *relay.Server
		if cache != nil {
			srv = cache.srv
		} else {
			var err error
			if srv, err = relay.New(relay.Options{MaxBytes: cfg.RelayCacheMax, Transport: ghcr.Transport(probeOpts...), UserAgent: "ghcr-pull"}); err != nil {
				rep.Error("ghcr-pull: the relay could not start", err.Error())
				return ExitFailed
			}
			defer srv.Close()
		}
		feeds = srv
		settings := *cfg.SSH
		settings.Relay = srv
		cfg.SSH = &settings
		paths := map[string]string{}
		for _, img := range cfg.Images {
			paths[img.Input] = img.Ref.Context().RepositoryStr()
		}
		relayed = func(image, host string) int64 { return srv.Served(host, paths[image]) }
	}
	targets := targetsFor(cfg, rep, probeOpts, cache)
	addDaemonMirrors(ctx, &cfg, rep)
	ev := newEvents(rep, 10*time.Second)
	defer ev.stop()
	opts := pull.Options{
		Verify:            verifierFor(cfg.Verify, probeOpts),
		Credentials:       cfg.Credentials,
		Fallback:          cfg.Fallback,
		Platform:          cfg.Platform,
		Retry:             retry.Default(cfg.Retries),
		TargetConcurrency: cfg.SSHConcurrency,
		ProbeOptions:      probeOpts,
		Events:            ev,
		QuotaGuard:        cfg.QuotaGuard,
		Mirrors:           cfg.Mirrors,
		MirrorCredentials: cfg.MirrorCredentials,
	}
	if cfg.Kube != nil {
		opts.Fleet = cfg.Kube // the cluster pre-pulls itself: a *kube.Config is a pull.Fleet
	}
	var warm *relayWarmer
	if feeds != nil {
		warm = newRelayWarmer(ctx, feeds)
		opts.Probed = warm.probed
	}
	results := pull.Run(ctx, cfg.Images, targets, opts)
	if warm != nil {
		warm.stop() // before the relay (or the cache) closes
	}
	for i, r := range results {
		// The one boundary for what went wrong while pulling: the
		// packages below name their settings, the user reads inputs.
		results[i].Err = named(r.Err, runInputs)
		results[i].Diagnosis = namedText(r.Diagnosis, runInputs)
	}
	ev.stop()
	if cache != nil {
		cache.close(ctx, rep, cfg.Images, results)
	}

	failed := 0
	noted := map[string]bool{}
	for _, r := range results {
		for _, n := range r.MirrorNotes {
			if !noted[n.Text] {
				noted[n.Text] = true
				rep.Info("%s", n.Text)
			}
		}
		if r.Err == nil {
			via := ""
			if r.ServedBy != "" {
				via = ", served by mirror " + r.ServedBy
			}
			rep.Info("%s on %s: %s, %s%s (%s)", r.Image, r.Host, r.AuthMode, orDash(r.ImageRef), via, r.Duration.Round(time.Millisecond))
			if relayed != nil && r.Host != "local" {
				rep.Info("%s on %s: the relay sent %d bytes", r.Image, r.Host, relayed(r.Image, r.Host))
			}
			continue
		}
		failed++
		msg := r.Diagnosis
		if msg == "" {
			msg = r.Err.Error()
		}
		rep.Error(fmt.Sprintf("ghcr-pull: %s failed on %s", r.Image, r.Host), msg)
	}
	if err := writeOutputs(rep, results, relayed); err != nil {
		rep.Error("ghcr-pull: could not write outputs", err.Error())
		return ExitFailed
	}
	if cfg.Summary {
		if err := rep.Summary(results); err != nil {
			rep.Warning("ghcr-pull: could not write the job summary", err.Error())
		}
	}
	if failed > 0 {
		return ExitFailed
	}
	return ExitOK
}

// verifierFor is pull's verification hook for policy p (nil: none): it
// checks a probed digest with the credentials the probe succeeded with,
// through the probe's transport (plain HTTP refused, tokens masked). Every
// policy failure (no signature, an invalid one, another signer) comes back
// as the error, so pull fails the image and pulls nothing; only a
// signature that verified yields a Verification.
func verifierFor(p *verify.Policy, probeOpts []ghcr.Option) func(context.Context, name.Digest, registryauth.Credentials) (pull.Verification, error) {
	if p == nil {
		return nil
	}
	transport := ghcr.Transport(probeOpts...)
	return func(ctx context.Context, digest name.Digest, creds registryauth.Credentials) (pull.Verification, error) {
		var auth authn.Authenticator
		if !creds.IsAnonymous() {
			auth = creds.Authenticator()
		}
		v, err := verify.Verify(ctx, p, digest, auth, remote.WithTransport(transport), remote.WithUserAgent("ghcr-pull"))
		if err != nil {
			return pull.Verification{}, err
		}
		return pull.Verification{Method: string(v.Method), Identity: v.Identity, SignatureDigest: v.SignatureDigest}, nil
	}
}

// targetsFor lists where images go: nowhere (destination none), the
// runner's daemon, or the SSH hosts (plus the runner's with pull-local).
func targetsFor(cfg Config, rep *writer, probeOpts []ghcr.Option, cache *imageCache) []pull.Target {
	switch cfg.Destination {
	case DestinationNone, DestinationKubernetes:
		return nil
	case DestinationLayout, DestinationTar:
		return []pull.Target{fileTarget(cfg, probeOpts)}
	}
	local := pull.Target{Name: sshdeploy.LocalHost, Open: func(ctx context.Context) (pull.Daemon, error) {
		e, err := docker.Open(ctx, cfg.DockerHost)
		switch {
		case err != nil:
			return nil, err // not a nil *docker.Engine in a non-nil pull.Daemon, which pull would Close
		case cache == nil:
			return e, nil
		}
		return cache.daemon(ctx, e)
	}}
	if cfg.SSH == nil {
		return []pull.Target{local}
	}
	if cfg.SSH.Insecure() {
		rep.Warning("ghcr-pull: SSH host keys are not verified",
			"ssh-insecure-ignore-host-key is true: anyone on the path to the hosts can impersonate them and receive the registry credentials. Set ssh-known-hosts or ssh-fingerprint instead.")
	}
	var targets []pull.Target
	if cfg.PullLocal {
		targets = append(targets, local)
	}
	for _, h := range cfg.SSH.Hosts {
		targets = append(targets, pull.Target{Name: h.Addr(), Open: func(ctx context.Context) (pull.Daemon, error) { return sshdeploy.Open(ctx, h, cfg.SSH) }})
	}
	return targets
}

// fileTarget writes images at cfg.Path; its registry requests go through
// the probe's transport (tokens masked, plain HTTP refused off loopback).
func fileTarget(cfg Config, probeOpts []ghcr.Option) pull.Target {
	opts := imagefile.Options{Transport: ghcr.Transport(probeOpts...)}
	return pull.Target{Name: cfg.PathShown, Open: func(ctx context.Context) (pull.Daemon, error) {
		if cfg.Destination == DestinationTar {
			return imagefile.NewTar(cfg.Path, cfg.Images[0].Input, opts)
		}
		return imagefile.NewLayout(cfg.Path, opts), nil
	}}
}

// pathBase is where relative paths resolve: in GitHub Actions the job's
// workspace (GITHUB_WORKSPACE, /github/workspace in the action's
// container; the working directory the runner sets, when unset), else the
// working directory.
func pathBase(env Env, inActions bool) ParseOption {
	wd, _ := os.Getwd()
	if inActions {
		if ws := env.Getenv("GITHUB_WORKSPACE"); ws != "" {
			return InWorkspace(ws)
		}
		return InWorkspace(wd)
	}
	return InDir(wd)
}

// ResultJSON is one element of the results output.
type ResultJSON struct {
	Image           string   `json:"image"`
	Host            string   `json:"host"`
	Runtime         string   `json:"runtime,omitempty"`
	Namespace       string   `json:"namespace,omitempty"`
	AuthMode        string   `json:"auth_mode"`
	OIDCProvider    string   `json:"oidc_provider,omitempty"`
	FallbackUsed    bool     `json:"fallback_used"`
	CredentialError string   `json:"credential_error"`
	Digest          string   `json:"digest"`
	ImageRef        string   `json:"image_ref"`
	Platform        string   `json:"platform"`
	PlatformDigest  string   `json:"platform_digest,omitempty"`
	VerifyMethod    string   `json:"verify_method,omitempty"`
	VerifyIdentity  string   `json:"verify_identity,omitempty"`
	SignatureDigest string   `json:"signature_digest,omitempty"`
	DurationMS      int64    `json:"duration_ms"`
	Pulled          *bool    `json:"pulled,omitempty"`
	RelayedBytes    *int64   `json:"relayed_bytes,omitempty"`
	ServedBy        string   `json:"served_by,omitempty"`
	ResolvedBy      string   `json:"resolved_by,omitempty"`
	MirrorNotes     []string `json:"mirror_notes,omitempty"`
	Error           string   `json:"error,omitempty"`
	ErrorClass      string   `json:"error_class,omitempty"`
}

// toJSON redacts the peers' words (credential_error, error) before they are
// encoded: a secret echoed in its JSON-escaped form, escaped once more by
// the encoding, would match no form the redactor knows afterwards.
func toJSON(results []pull.Result, redact func(string) string, relayed func(image, host string) int64) []ResultJSON {
	out := make([]ResultJSON, 0, len(results))
	for _, r := range results {
		j := ResultJSON{
			Image: r.Image, Host: r.Host, Runtime: r.Runtime, Namespace: r.Namespace, AuthMode: string(r.AuthMode), OIDCProvider: r.Provider,
			FallbackUsed: r.FallbackUsed, CredentialError: redact(r.CredentialError), Digest: r.Digest,
			ImageRef: r.ImageRef, Platform: r.Platform, PlatformDigest: r.PlatformDigest, DurationMS: r.Duration.Milliseconds(),
			ServedBy: r.ServedBy, ResolvedBy: r.ResolvedBy,
		}
		for _, n := range r.MirrorNotes {
			j.MirrorNotes = append(j.MirrorNotes, redact(n.Text))
		}
		if r.Host != pull.HostNone && r.Err == nil {
			pulled := r.Pulled
			j.Pulled = &pulled
		}
		if relayed != nil && r.Host != "local" && r.Host != pull.HostNone {
			n := relayed(r.Image, r.Host)
			j.RelayedBytes = &n
		}
		if v := r.Verification; v != nil {
			j.VerifyMethod, j.VerifyIdentity, j.SignatureDigest = v.Method, v.Identity, v.SignatureDigest
		}
		if r.Err != nil {
			j.Error, j.ErrorClass = redact(r.Err.Error()), failure.ClassOf(r.Err)
		}
		out = append(out, j)
	}
	return out
}

// writeOutputs writes every output; relayed, when set, is what the relay
// sent each host for an image.
func writeOutputs(rep *writer, results []pull.Result, relayed func(image, host string) int64) error {
	modes := map[registryauth.Mode]bool{}
	fallback := false
	credErr, digest, ref, sigDigest := "", "", "", ""
	verified := map[string]bool{} // "method: identity" of every success
	unverified := false
	for _, r := range results {
		if r.Err == nil {
			modes[r.AuthMode] = true
			if v := r.Verification; v != nil {
				verified[v.Method+": "+v.Identity] = true
			} else {
				unverified = true
			}
		}
		fallback = fallback || r.FallbackUsed
		if credErr == "" {
			credErr = r.CredentialError
		}
	}
	// digest and image-ref describe the first image: its first target that
	// succeeded.
	if len(results) > 0 {
		first := results[0].Image
		for _, r := range results {
			if r.Image == first && r.Err == nil {
				digest, ref = r.Digest, r.ImageRef
				if r.Verification != nil {
					sigDigest = r.Verification.SignatureDigest
				}
				break
			}
		}
	}
	mode := ""
	for m := range modes {
		if mode != "" {
			mode = "mixed"
			break
		}
		mode = string(m)
	}
	verifiedBy := ""
	if !unverified {
		verifiedBy = strings.Join(slices.Sorted(maps.Keys(verified)), "\n")
	}
	js, err := json.Marshal(toJSON(results, rep.Redact, relayed))
	if err != nil {
		return err
	}
	qs, err := json.Marshal(quotasJSON(results))
	if err != nil {
		return err
	}
	for _, o := range [][2]string{
		{"auth-mode", mode},
		{"fallback-used", fmt.Sprint(fallback)},
		{"credential-error", credErr},
		{"digest", digest},
		{"image-ref", ref},
		{"verified", verifiedBy},
		{"signature-digest", sigDigest},
		{"pull-quota", string(qs)},
		{"results", string(js)},
	} {
		if err := rep.Output(o[0], o[1]); err != nil {
			return err
		}
	}
	return nil
}

// summaryMarkdown renders the job summary. Every cell is escaped: registry
// text reaches it. Secrets are redacted (by w's redactor) before escaping: escaped, a secret
// with <, &, " or | in it would no longer match any form the redactor
// knows.
func (w *writer) summaryMarkdown(results []pull.Result) string {
	cell := func(s string) string { return cell(w.red.Redact(s)) }
	var b strings.Builder
	b.WriteString("### ghcr-pull\n\n| Image | Host | Auth mode | Fallback | Digest | Duration |\n|---|---|---|---|---|---|\n")
	for _, r := range results {
		mode := string(r.AuthMode)
		if r.Err != nil {
			mode = "❌ failed"
		}
		fb := "no"
		if r.FallbackUsed {
			fb = "yes: " + r.CredentialError
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", cell(r.Image), cell(r.Host), cell(mode), cell(fb),
			cell(orDash(r.Digest)), r.Duration.Round(time.Millisecond))
	}
	mirrorSummary(&b, results, cell)
	for _, q := range quotas(results) {
		icon := "ℹ️"
		if q.Remaining == 0 {
			icon = "⚠️"
		}
		fmt.Fprintf(&b, "\n%s **Pull quota of %s** before this step: %s\n", icon, cell(q.Registry), cell(q.String()))
	}
	seen := map[string]bool{}
	for _, r := range results {
		if v := r.Verification; v != nil && !seen[r.Image] {
			seen[r.Image] = true
			how := ""
			if v.Anonymous {
				how = " (the signature was read anonymously: the registry refused the credentials for it)"
			}
			fmt.Fprintf(&b, "\n✅ **%s** verified before any pull: %s, signed by %s, signature %s%s\n",
				cell(r.Image), cell(v.Method), cell(v.Identity), cell(v.SignatureDigest), cell(how))
		}
	}
	for _, r := range results {
		if r.Err == nil {
			continue
		}
		diag := r.Diagnosis
		if diag == "" {
			diag = r.Err.Error()
		}
		fmt.Fprintf(&b, "\n**%s on %s failed**\n\n<pre>%s</pre>\n", cell(r.Image), cell(r.Host), html.EscapeString(w.red.Redact(diag)))
	}
	return b.String()
}

func cell(s string) string {
	s = html.EscapeString(s)
	return strings.NewReplacer("|", "\\|", "\n", " ", "\r", " ").Replace(s)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// events turns pull's events into log lines and annotations. Progress is
// printed as one line per image and host every interval, not per layer.
type events struct {
	rep      *writer
	mu       sync.Mutex
	progress map[string][2]int64
	printed  map[string][2]int64
	done     chan struct{}
	once     sync.Once
}

func newEvents(rep *writer, every time.Duration) *events {
	e := &events{rep: rep, progress: map[string][2]int64{}, printed: map[string][2]int64{}, done: make(chan struct{})}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-e.done:
				return
			case <-t.C:
				e.flush()
			}
		}
	}()
	return e
}

func (e *events) stop() { e.once.Do(func() { close(e.done) }) }

func (e *events) flush() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, v := range e.progress {
		if e.printed[k] == v {
			continue
		}
		e.printed[k] = v
		e.rep.Info("%s: %s of %s", k, bytesText(v[0]), bytesText(v[1]))
	}
}

func (e *events) Fallback(img pull.Image, stage pull.Stage, target string, rejection, outcome error) {
	where := "the registry"
	if stage == pull.AtTarget {
		where = "the daemon on " + target
	}
	// Said after the anonymous attempt, so that it never promises what
	// did not happen.
	if outcome == nil {
		e.rep.Warning("ghcr-pull: credentials rejected, pulled anonymously",
			fmt.Sprintf("%s: %s rejected the credentials (%v); the anonymous retry worked, as it does for public images. Fix the credentials to stop this warning.", img.Input, where, rejection))
		return
	}
	e.rep.Warning("ghcr-pull: credentials rejected, and the anonymous retry failed too",
		fmt.Sprintf("%s: %s rejected the credentials (%v); the anonymous retry failed as well (%v).", img.Input, where, rejection, outcome))
}

func (e *events) Retry(img pull.Image, stage pull.Stage, target string, attempt int, wait time.Duration, err error) {
	if stage == pull.AtProbe {
		target = "registry"
	}
	e.rep.Info("%s (%s): retry %d in %s after %v", img.Input, target, attempt, wait.Round(time.Millisecond), err)
}

func (e *events) Progress(img pull.Image, host string, done, total int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.progress[img.Input+" on "+host] = [2]int64{done, total}
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// flagGetter builds a Getter from command-line flags mirroring the inputs.
// The password never comes from a flag (it would sit in the process list
// and shell history): GHCR_PULL_PASSWORD or --password-stdin.
func flagGetter(args []string, env Env, md Metadata) (Getter, error) {
	fs := flag.NewFlagSet("ghcr-pull", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	values := map[string]*string{}
	for _, in := range md.Inputs {
		if secretInputs[in.Name] {
			continue
		}
		values[in.Name] = fs.String(in.Name, in.Default, in.Description)
	}
	stdin := fs.Bool("password-stdin", false, "Read the password from standard input (else from GHCR_PULL_PASSWORD).")
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: ghcr-pull [flags] IMAGE...\n       ghcr-pull demo\n\nPulls images with non-interactive registry auth and anonymous fallback.\nThe password comes from GHCR_PULL_PASSWORD or --password-stdin.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	images := append([]string{*values["image"]}, fs.Args()...)
	*values["image"] = strings.Join(images, "\n")
	password := env.Getenv("GHCR_PULL_PASSWORD")
	if *stdin {
		b, err := io.ReadAll(io.LimitReader(env.Stdin, 64<<10))
		if err != nil {
			return nil, fmt.Errorf("--password-stdin: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	return func(name string) string {
		if name == "password" {
			return password
		}
		if v, ok := values[name]; ok {
			return *v
		}
		return ""
	}, nil
}

// deriveOIDC exchanges the workflow's ID token for registry credentials,
// retrying what is transient. Every token is masked as it appears.
func deriveOIDC(ctx context.Context, cfg Config, rep *writer, env Env) (registryauth.Credentials, error) {
	idToken := idTokenSource(env)
	o := *cfg.OIDC
	o.Getenv = env.Getenv
	var creds registryauth.Credentials
	err := retry.Do(ctx, retry.Default(cfg.Retries), func(ctx context.Context) error {
		var err error
		creds, err = oidc.Exchange(ctx, o, idToken, rep.Mask)
		return err
	})
	return creds, named(err, oidcInputs)
}

// idTokenSource asks the Actions runtime for the workflow's ID token; a
// job without id-token: write is told so, as a bad input.
func idTokenSource(env Env) oidc.IDTokenSource {
	gha := githubactions.New(githubactions.WithGetenv(env.Getenv))
	return func(ctx context.Context, audience string) (string, error) {
		tok, err := gha.GetIDToken(ctx, audience)
		var missing *githubactions.EnvMissingError
		var failed *githubactions.RequestFailedError
		switch {
		case errors.As(err, &missing):
			return "", failure.Bad("permissions",
				"the job cannot request an OIDC ID token ("+missing.Name+" is unset)",
				"add `permissions: id-token: write` to the job")
		case errors.As(err, &failed) && (failed.StatusCode >= 500 || failed.StatusCode == 429):
			return "", &failure.Transient{Response: failure.Response{Status: failed.StatusCode, Where: "Actions ID token endpoint"}}
		case errors.As(err, &failed):
			return "", fmt.Errorf("the Actions runtime refused the ID token request (%d)", failed.StatusCode)
		}
		return tok, err
	}
}

// quotas is one pull quota per registry that reported one, the lowest
// reading of the step's probes (the latest: only pulls lower it), in the
// order the registries first appear.
func quotas(results []pull.Result) []ghcr.Quota {
	var out []ghcr.Quota
	at := map[string]int{}
	for _, r := range results {
		if r.Quota == nil {
			continue
		}
		i, ok := at[r.Quota.Registry]
		if !ok {
			at[r.Quota.Registry] = len(out)
			out = append(out, *r.Quota)
			continue
		}
		if r.Quota.Remaining < out[i].Remaining {
			out[i] = *r.Quota
		}
	}
	return out
}

// QuotaJSON is one element of the pull-quota output.
type QuotaJSON struct {
	Registry      string `json:"registry"`
	Limit         int    `json:"limit"`
	Remaining     int    `json:"remaining"`
	WindowSeconds int64  `json:"window_seconds,omitempty"`
	Source        string `json:"source,omitempty"`
}

func quotasJSON(results []pull.Result) []QuotaJSON {
	out := []QuotaJSON{}
	for _, q := range quotas(results) {
		out = append(out, QuotaJSON{Registry: q.Registry, Limit: q.Limit, Remaining: q.Remaining,
			WindowSeconds: int64(q.Window / time.Second), Source: q.Source})
	}
	return out
}

// addDaemonMirrors adds the runner's daemon's registry-mirrors (Docker Hub
// only, as dockerd uses them) after the mirrors input, when the runner's
// daemon is a destination and an image is on Docker Hub. Not reading them
// only loses a fallback: the step goes on.
func addDaemonMirrors(ctx context.Context, cfg *Config, rep *writer) {
	if cfg.Destination != DestinationDocker || (cfg.SSH != nil && !cfg.PullLocal) {
		return
	}
	onHub := false
	for _, img := range cfg.Images {
		onHub = onHub || img.Ref.Context().RegistryStr() == mirror.DockerHub
	}
	if !onHub {
		return
	}
	e, err := docker.Open(ctx, cfg.DockerHost)
	if err != nil {
		return // the local target reports it
	}
	defer e.Close()
	urls, err := e.Mirrors(ctx)
	if err != nil {
		rep.Info("could not read the daemon's registry-mirrors: %v", err)
		return
	}
	if ms := mirror.FromDaemon(urls); len(ms) > 0 {
		if cfg.Mirrors == nil {
			cfg.Mirrors = mirror.Set{}
		}
		cfg.Mirrors.Add(mirror.DockerHub, ms...)
		names := make([]string, len(ms))
		for i, m := range ms {
			names[i] = m.String()
		}
		rep.Info("the daemon's registry-mirrors for Docker Hub: %s", strings.Join(names, ", "))
	}
}

// mirrorSummary says, per image, which mirror served or resolved it and
// which mirrors were passed over (a different digest, down).
func mirrorSummary(b *strings.Builder, results []pull.Result, cell func(string) string) {
	seen := map[string]bool{}
	for _, r := range results {
		if r.ServedBy != "" {
			fmt.Fprintf(b, "\n🪞 **%s** on %s served by mirror %s (the digest upstream resolved)\n", cell(r.Image), cell(r.Host), cell(r.ServedBy))
		}
		for _, n := range r.MirrorNotes {
			if !seen[n.Text] {
				seen[n.Text] = true
				icon := "ℹ️"
				if n.Distrusted {
					icon = "⚠️"
				}
				fmt.Fprintf(b, "\n%s %s\n", icon, cell(n.Text))
			}
		}
	}
}

// relayWarmer starts the relay's upstream round trips for each image (the
// registry's handshake, the manifest) as soon as the probe settled its
// digest and credentials (pull.Options.Probed), while the hosts are still
// being reached; a host's pull then joins that fetch or finds it done,
// instead of waiting for it after the SSH connection is up. A failure is
// left to the host's own Allow, which meets it again and reports it
// classified.
type relayWarmer struct {
	srv    *relay.Server
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newRelayWarmer(ctx context.Context, srv *relay.Server) *relayWarmer {
	ctx, cancel := context.WithCancel(ctx)
	return &relayWarmer{srv: srv, ctx: ctx, cancel: cancel}
}

func (w *relayWarmer) probed(_ context.Context, ref name.Digest, creds registryauth.Credentials) {
	w.wg.Go(func() { _, _ = w.srv.Allow(w.ctx, ref, creds) })
}

// stop ends the fetches still running and waits for them.
func (w *relayWarmer) stop() {
	w.cancel()
	w.wg.Wait()
}
