// Package action is ghcr-pull's side of the GitHub Actions contract: it reads
// the inputs (or the equivalent command-line flags) into one validated
// Config, runs the pull, and turns the results into outputs, a job summary
// and annotations through one writer that masks secrets and cannot be made
// to inject workflow commands. Nothing below this package knows about
// GitHub Actions.
package action

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/imagefile"
	"github.com/ghcr-pull/ghcr-pull/internal/kube"
	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
)

// Getter returns an input's raw value ("" when unset).
type Getter func(name string) string

// EnvGetter reads inputs as the runner passes them: INPUT_<NAME>, upper-cased,
// hyphens kept, spaces as underscores.
func EnvGetter(getenv func(string) string) Getter {
	return func(name string) string {
		key := "INPUT_" + strings.ToUpper(strings.ReplaceAll(name, " ", "_"))
		return getenv(key)
	}
}

// Destination is where images go.
type Destination string

const (
	DestinationDocker Destination = "docker"
	DestinationNone   Destination = "none"
	// DestinationKubernetes pre-pulls onto a cluster's nodes.
	DestinationKubernetes Destination = "kubernetes"
	// DestinationLayout and DestinationTar write files at Path instead of
	// pulling into a daemon.
	DestinationLayout Destination = Destination(imagefile.Layout)
	DestinationTar    Destination = Destination(imagefile.Tarball)
)

// Config is every input, validated. The rest of the program takes this,
// never raw strings.
type Config struct {
	Images      []pull.Image
	Credentials registryauth.Credentials
	// AnonymousNotice, when set, says why the step pulls anonymously by
	// choice or for lack of a secret.
	AnonymousNotice string
	Fallback        bool
	// Platform is the platform to pull; nil means each runtime's own.
	Platform    *ocispec.Platform
	DockerHost  string
	Destination Destination
	Retries     int
	Timeout     time.Duration
	// QuotaGuard fails early when a registry's pull quota cannot cover
	// the step.
	QuotaGuard bool
	// Mirrors may serve images in place of their registries;
	// MirrorCredentials go to those mirrors only.
	Mirrors           mirror.Set
	MirrorCredentials registryauth.Credentials
	Summary           bool
	// InsecureRegistries may be probed over plain HTTP.
	InsecureRegistries []string
	// OIDC is set when credentials are to be derived from the workflow's
	// ID token.
	OIDC *oidc.Config
	// SSH is set when ssh-host names hosts to pull on.
	SSH            *sshdeploy.Settings
	SSHConcurrency int
	// PullLocal also pulls into the runner's daemon when SSH is set.
	PullLocal bool
	// Relay sends the SSH hosts' pulls through the runner (ssh-transfer:
	// relay) instead of to the registry.
	Relay bool
	// RelayCacheMax bounds the relay's blob cache on the runner
	// (relay-cache-max), in bytes.
	RelayCacheMax int64
	// Verify, when set, is the signature every image must carry.
	Verify *verify.Policy
	// Kube is set with destination kubernetes; with KubeAuth (a keyless
	// form), only once execute has reached the cluster.
	Kube     *kube.Config
	KubeAuth *KubeAuth
	// Path is where destination oci-layout or tar writes, absolute;
	// PathShown is how results name it (relative to the workspace in
	// GitHub Actions).
	Path, PathShown string
	// CachePath is the relay's persistent OCI layout (cache-path),
	// absolute, or "": with it the runner's daemon pulls through the relay.
	CachePath string
}

// ParseOption says where ParseConfig resolves relative paths.
type ParseOption func(*parseOptions)

type parseOptions struct {
	base    string
	bounded bool
}

// InWorkspace resolves relative paths in dir, the job's workspace, and
// refuses paths outside it: the action's container shares only the
// workspace with later steps.
func InWorkspace(dir string) ParseOption {
	return func(o *parseOptions) { o.base, o.bounded = dir, true }
}

// InDir resolves relative paths in dir (the command line's working
// directory) and takes any absolute path.
func InDir(dir string) ParseOption {
	return func(o *parseOptions) { o.base, o.bounded = dir, false }
}

// ParseConfig validates every input and names the first bad one. Unset
// inputs take their defaults from md.
func ParseConfig(get Getter, md Metadata, opts ...ParseOption) (Config, error) {
	var in Getter = func(name string) string {
		if v := strings.TrimSpace(get(name)); v != "" {
			return v
		}
		return md.Default(name)
	}
	var c Config
	var err error
	if c.Images, err = pull.ParseImages(splitList(get("image"))); err != nil {
		return c, err
	}
	if c.Fallback, err = parseBool("anonymous-fallback", in("anonymous-fallback")); err != nil {
		return c, err
	}
	if c.Summary, err = parseBool("summary", in("summary")); err != nil {
		return c, err
	}
	if c.QuotaGuard, err = parseBool("quota-guard", in("quota-guard")); err != nil {
		return c, err
	}
	if p := in("platform"); p != "" {
		pl, err := image.ParsePlatform(p)
		if err != nil {
			return c, err
		}
		c.Platform = &pl
	}
	c.DockerHost = in("docker-host")
	for _, h := range splitList(in("insecure-registry")) {
		if strings.ContainsAny(h, "/@ ") {
			return c, failure.Bad("insecure-registry", fmt.Sprintf("%q is not a host[:port]", h), "e.g. 10.0.0.5:5000")
		}
		c.InsecureRegistries = append(c.InsecureRegistries, h)
	}
	if c.Mirrors, err = mirror.Parse(get("mirrors")); err != nil {
		return c, named(err, mirrorInputs)
	}
	mirrorUser, mirrorPassword := strings.TrimSpace(get("mirror-username")), get("mirror-password")
	switch {
	case mirrorPassword != "":
		c.MirrorCredentials = registryauth.Credentials{Mode: registryauth.ModeToken, Username: cmp.Or(mirrorUser, "ghcr-pull"), Password: mirrorPassword}
	case mirrorUser != "":
		return c, failure.Bad("mirror-password", "mirror-username is set but mirror-password is empty", "pass the mirror's password or token from a secret, or drop mirror-username")
	}
	if !c.MirrorCredentials.IsAnonymous() && len(c.Mirrors) == 0 {
		return c, failure.Bad("mirror-password", "is set, but mirrors lists no mirror", "list the mirrors it belongs to in mirrors, or drop mirror-password")
	}
	for _, ms := range c.Mirrors {
		for _, m := range ms {
			if m.PlainHTTP {
				c.InsecureRegistries = append(c.InsecureRegistries, m.Host)
			}
		}
	}
	switch d := Destination(strings.ToLower(in("destination"))); d {
	case DestinationDocker, DestinationNone, DestinationKubernetes, DestinationLayout, DestinationTar:
		c.Destination = d
	default:
		return c, failure.Bad("destination", fmt.Sprintf("%q is not a destination", d), "use docker, kubernetes, oci-layout, tar or none")
	}
	if err := parsePath(&c, get, opts); err != nil {
		return c, err
	}
	if c.Verify, err = verify.ParsePolicy(func(s verify.Setting) string { return in(verifyInputs[s]) }); err != nil {
		return c, named(err, verifyInputs)
	}
	if err := parseKube(&c, get, in); err != nil {
		return c, err
	}
	if err := parseSSH(&c, get, in); err != nil {
		return c, err
	}
	if c.Retries, err = strconv.Atoi(in("retries")); err != nil || c.Retries < 0 || c.Retries > 20 {
		return c, failure.Bad("retries", fmt.Sprintf("%q is not a whole number from 0 to 20", in("retries")), "e.g. retries: 3")
	}
	if c.Timeout, err = time.ParseDuration(in("timeout")); err != nil || c.Timeout <= 0 {
		return c, failure.Bad("timeout", fmt.Sprintf("%q is not a positive duration", in("timeout")), "e.g. 90s, 10m, 1h")
	}

	// Secrets are taken as given: trimming a password would silently send
	// a different one.
	user, password := strings.TrimSpace(get("username")), get("password")
	mode := strings.ToLower(in("auth"))
	if mode == "auto" && in("oidc-provider") != "" {
		mode = "oidc"
	}
	switch mode {
	case "oidc":
		c.OIDC = &oidc.Config{
			Provider:                    in("oidc-provider"),
			Audience:                    in("oidc-audience"),
			AWSRoleARN:                  in("aws-role-arn"),
			AWSRegion:                   in("aws-region"),
			GCPWorkloadIdentityProvider: in("gcp-workload-identity-provider"),
			GCPServiceAccount:           in("gcp-service-account"),
			AzureClientID:               in("azure-client-id"),
			AzureTenantID:               in("azure-tenant-id"),
			DockerHubConnectionID:       in("dockerhub-connection-id"),
			TokenExchangeURL:            in("token-exchange-url"),
			Username:                    user,
			Registry:                    c.Images[0].Ref.Context().RegistryStr(),
		}
		if c.OIDC.Provider == "" {
			return c, failure.Bad("oidc-provider", "auth is oidc but no provider is named", "set oidc-provider: aws-ecr, gcp, azure-acr, dockerhub or token-exchange")
		}
		if err := c.OIDC.Validate(); err != nil {
			return c, err
		}
		// The credentials are derived at run time (Exchange).
		c.Credentials = registryauth.Credentials{Mode: registryauth.ModeOIDC, Provider: c.OIDC.Provider}
		return c, nil
	case "auto":
		if password == "" {
			c.Credentials = registryauth.Anonymous
			c.AnonymousNotice = "no password was given (pull requests from forks get no secrets), so the pull is anonymous"
		} else {
			c.Credentials = registryauth.Credentials{Mode: registryauth.ModeToken, Username: user, Password: password}
		}
	case "token":
		if password == "" {
			return c, failure.Bad("password", "auth is token but the password is empty", "pass password: ${{ secrets.GITHUB_TOKEN }} or a PAT, or use auth: auto")
		}
		c.Credentials = registryauth.Credentials{Mode: registryauth.ModeToken, Username: user, Password: password}
	case "anonymous":
		c.Credentials = registryauth.Anonymous
		c.AnonymousNotice = "auth is anonymous: no credentials are sent"
	default:
		return c, failure.Bad("auth", fmt.Sprintf("%q is not an auth mode", mode), "use auto, token, anonymous or oidc")
	}
	if !c.Credentials.IsAnonymous() && user == "" {
		// GHCR ignores the user name for tokens, but other registries
		// and the daemon's auth config need one.
		c.Credentials.Username = "ghcr-pull"
	}
	return c, nil
}

// sizeUnits are the suffixes parseSize takes, in binary multiples: a
// runner's disk is reported in GiB.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"tib", 1 << 40}, {"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10}, {"t", 1 << 40}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1}}

// parseSize reads a positive whole number of bytes with an optional unit
// (20GiB, 512MiB, 4g, 1048576).
func parseSize(input, v string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	mult := int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return 0, failure.Bad(input, fmt.Sprintf("%q is not a size", v), "a whole number of bytes with an optional unit, e.g. 20GiB or 512MiB")
	}
	return n * mult, nil
}

// parseBool accepts YAML 1.2 core booleans, as the runner passes them.
func parseBool(input, v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return false, failure.Bad(input, fmt.Sprintf("%q is not a boolean", v), "use true or false")
}

// splitList splits a list input on newlines and commas, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == ',' || r == '\r' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parsePath reads the file destinations' path: set exactly with them,
// one image per tar, no SSH hosts; and cache-path, for the runner's daemon.
func parsePath(c *Config, get Getter, opts []ParseOption) error {
	o := parseOptions{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.base == "" {
		wd, err := os.Getwd()
		if err != nil {
			return failure.Bad("path", "the working directory is unknown: "+err.Error(), "give an absolute path")
		}
		o.base = wd
	}
	if err := parseCachePath(c, get, o); err != nil {
		return err
	}
	raw := strings.TrimSpace(get("path"))
	files := c.Destination == DestinationLayout || c.Destination == DestinationTar
	switch {
	case !files && raw != "":
		return failure.Bad("path", "is set, but destination is "+string(c.Destination), "set destination: oci-layout or tar to write the image as files, or drop path")
	case !files:
		return nil
	case raw == "":
		return failure.Bad("path", "is empty, and destination "+string(c.Destination)+" needs it", "e.g. path: images/app.tar (tar) or path: images/layout (oci-layout)")
	case strings.TrimSpace(get("ssh-host")) != "":
		return failure.Bad("ssh-host", "is set with destination "+string(c.Destination), "use one destination per step: drop ssh-host, or set destination: docker")
	case c.Destination == DestinationTar && len(c.Images) > 1:
		return failure.Bad("image", fmt.Sprintf("destination tar holds one image, and %d are given", len(c.Images)), "use one step per image, or destination: oci-layout, which holds several")
	}
	p, err := imagefile.ResolvePath(imagefile.Format(c.Destination), raw, o.base, o.bounded)
	if err != nil {
		return named(err, fileInputs)
	}
	c.Path, c.PathShown = p, p
	if rel, err := filepath.Rel(o.base, p); o.bounded && err == nil {
		c.PathShown = rel
	}
	return nil
}

// parseCachePath reads cache-path: for the runner's daemon, and for SSH
// hosts only through the relay (ssh-transfer: relay).
func parseCachePath(c *Config, get Getter, o parseOptions) error {
	raw := strings.TrimSpace(get("cache-path"))
	switch {
	case raw == "":
		return nil
	case c.Destination != DestinationDocker:
		return failure.Bad("cache-path", "is set, but destination is "+string(c.Destination), "use cache-path with destination: docker (the runner's daemon), or drop it")
	case strings.TrimSpace(get("ssh-host")) != "" && !strings.EqualFold(strings.TrimSpace(get("ssh-transfer")), "relay"):
		return failure.Bad("cache-path", "is set with ssh-host, and the hosts pull from the registry themselves (ssh-transfer: direct)", "set ssh-transfer: relay, so that the hosts pull through the runner's cache, or drop cache-path")
	}
	p, err := imagefile.ResolveCachePath(raw, o.base, o.bounded)
	if err != nil {
		return named(err, fileInputs)
	}
	c.CachePath = p
	return nil
}

// parseKube reads the cluster destination; the kubeconfig is a secret and
// taken as given.
func parseKube(c *Config, get, in Getter) error {
	kubeconfig := get("kubeconfig")
	if c.Destination != DestinationKubernetes {
		if strings.TrimSpace(kubeconfig) != "" {
			return failure.Bad("kubeconfig", "is set, but destination is "+string(c.Destination), "set destination: kubernetes to pre-pull onto the cluster, or drop kubeconfig")
		}
		return nil
	}
	if strings.TrimSpace(get("ssh-host")) != "" {
		return failure.Bad("ssh-host", "is set with destination kubernetes", "use one destination per step: drop ssh-host, or set destination: docker")
	}
	timeout, err := time.ParseDuration(in("kube-timeout"))
	if err != nil || timeout <= 0 {
		return failure.Bad("kube-timeout", fmt.Sprintf("%q is not a positive duration", in("kube-timeout")), "e.g. 90s, 5m")
	}
	if c.KubeAuth, err = parseKubeAuth(get, in, timeout); err != nil || c.KubeAuth != nil {
		return err
	}
	if strings.TrimSpace(kubeconfig) == "" {
		return failure.Bad("kubeconfig", "is empty, and destination kubernetes needs it", "pass the cluster's kubeconfig from a secret: kubeconfig: ${{ secrets.KUBECONFIG }}, or reach the cluster with kube-auth: eks, gke, aks or oidc")
	}
	cfg, err := kube.ParseConfig(kubeconfig, in("kube-context"), in("kube-namespace"), in("kube-node-selector"), timeout)
	if err != nil {
		return err
	}
	c.Kube = &cfg
	return nil
}

// parseSSH reads the ssh-* and remote runtime inputs; sshdeploy.Parse
// checks and defaults its own all at once (with no ssh-host, only the
// remote runtime ones, and c.SSH stays nil).
func parseSSH(c *Config, get, in Getter) error {
	var err error
	if c.PullLocal, err = parseBool("pull-local", in("pull-local")); err != nil {
		return err
	}
	if c.SSHConcurrency, err = strconv.Atoi(in("ssh-concurrency")); err != nil || c.SSHConcurrency < 1 || c.SSHConcurrency > 64 {
		return failure.Bad("ssh-concurrency", fmt.Sprintf("%q is not a whole number from 1 to 64", in("ssh-concurrency")), "e.g. ssh-concurrency: 4")
	}
	switch t := strings.ToLower(in("ssh-transfer")); t {
	case "direct":
	case "relay":
		c.Relay = true
	default:
		return failure.Bad("ssh-transfer", fmt.Sprintf("%q is not a transfer", t), "use direct (each host pulls from the registry) or relay (the hosts pull through the runner)")
	}
	if c.RelayCacheMax, err = parseSize("relay-cache-max", in("relay-cache-max")); err != nil {
		return err
	}
	c.SSH, err = sshdeploy.Parse(sshdeploy.Inputs{
		Hosts:                 get("ssh-host"),
		User:                  in("ssh-user"),
		Port:                  in("ssh-port"),
		Key:                   get("ssh-key"),
		KeyPassphrase:         get("ssh-key-passphrase"),
		KnownHosts:            get("ssh-known-hosts"),
		Fingerprints:          get("ssh-fingerprint"),
		InsecureIgnoreHostKey: in("ssh-insecure-ignore-host-key"),
		ProxyJump:             in("ssh-proxy-jump"),
		Timeout:               in("ssh-timeout"),
		Runtime:               in("remote-runtime"),
		DockerSocket:          in("remote-docker-socket"),
		ContainerdSocket:      in("remote-containerd-socket"),
		ContainerdNamespace:   in("containerd-namespace"),
	})
	if err != nil {
		return named(err, sshInputs)
	}
	if c.SSH == nil && c.Relay {
		return failure.Bad("ssh-transfer", "is relay, but ssh-host names no host to relay to", "set ssh-host, or drop ssh-transfer")
	}
	return nil
}

// verifyInputs names the verify policy's settings as the action's inputs.
var verifyInputs = map[verify.Setting]string{
	verify.SettingMethod:         "verify",
	verify.SettingKey:            "verify-key",
	verify.SettingIdentity:       "verify-identity",
	verify.SettingIdentityRegexp: "verify-identity-regexp",
	verify.SettingIssuer:         "verify-issuer",
	verify.SettingRepository:     "verify-repository",
	verify.SettingSignerWorkflow: "verify-signer-workflow",
	verify.SettingPredicateType:  "verify-predicate-type",
	verify.SettingTrustedRoot:    "verify-trusted-root",
}

// sshInputs names sshdeploy's settings, the fields of sshdeploy.Inputs,
// as the action's inputs: its errors name them, in Parse and in Open.
var sshInputs = map[string]string{
	"Hosts":                 "ssh-host",
	"User":                  "ssh-user",
	"Port":                  "ssh-port",
	"Key":                   "ssh-key",
	"KeyPassphrase":         "ssh-key-passphrase",
	"KnownHosts":            "ssh-known-hosts",
	"Fingerprints":          "ssh-fingerprint",
	"InsecureIgnoreHostKey": "ssh-insecure-ignore-host-key",
	"ProxyJump":             "ssh-proxy-jump",
	"Timeout":               "ssh-timeout",
	"Runtime":               "remote-runtime",
	"DockerSocket":          "remote-docker-socket",
	"ContainerdSocket":      "remote-containerd-socket",
	"ContainerdNamespace":   "containerd-namespace",
}

// mirrorInputs and fileInputs name mirror.Parse's, imagefile.ResolvePath's
// and ResolveCachePath's settings as the action's inputs, for ParseConfig;
// runInputs those that errors and advice met while pulling name
// (sshdeploy's, docker.Open's Host, ghcr's option and advice), for the
// pull's results, once.
var (
	mirrorInputs = map[string]string{"Mirrors": "mirrors"}
	fileInputs   = map[string]string{"Path": "path", "CachePath": "cache-path", "Format": "destination"}
	runInputs    = merged(sshInputs, map[string]string{
		"Host":               "docker-host",
		"InsecureRegistries": "insecure-registry",
		"Mirrors":            "mirrors",
		"QuotaGuard":         "quota-guard",
		"PullLocal":          "pull-local",
		"Transfer":           "ssh-transfer",
		// ghcr's advice under a failed verification
		"VerifyKey":            "verify-key",
		"VerifyTrustedRoot":    "verify-trusted-root",
		"VerifyIdentity":       "verify-identity",
		"VerifyIdentityRegexp": "verify-identity-regexp",
		"VerifyIssuer":         "verify-issuer",
		"VerifyRepository":     "verify-repository",
		"VerifySignerWorkflow": "verify-signer-workflow",
	})
)

// merged is the settings of every table, each named once.
func merged(tables ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, t := range tables {
		for s, n := range t {
			if m, ok := out[s]; ok && m != n {
				panic("setting " + s + " names both " + m + " and " + n)
			}
			out[s] = n
		}
	}
	return out
}

// named is where a package's settings get the input names users know
// them by (ParseConfig calls it, and execute for the pull's results):
// every *failure.BadInput in err's tree naming a setting of names is
// renamed to its input, and each {setting} in any error's text too (an
// error whose text names no setting is returned as it is). Packages below
// action name only their own parameters.
func named[S ~string](err error, names map[S]string) error {
	if err == nil {
		return nil
	}
	rename := renamer(names)
	for _, e := range tree(err) {
		if bad, ok := e.(*failure.BadInput); ok {
			if n, ok := names[S(bad.Input)]; ok {
				bad.Input = n
			}
			bad.Problem, bad.Fix = rename.Replace(bad.Problem), rename.Replace(bad.Fix)
		}
	}
	if text := rename.Replace(err.Error()); text != err.Error() {
		return &renamedError{error: err, text: text}
	}
	return err
}

// namedText is text with each {setting} of names renamed to its input.
func namedText[S ~string](text string, names map[S]string) string {
	return renamer(names).Replace(text)
}

func renamer[S ~string](names map[S]string) *strings.Replacer {
	braced := make([]string, 0, 2*len(names))
	for s, n := range names {
		braced = append(braced, "{"+string(s)+"}", n)
	}
	return strings.NewReplacer(braced...)
}

// tree is err and every error it wraps.
func tree(err error) []error {
	out := []error{err}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if w := u.Unwrap(); w != nil {
			out = append(out, tree(w)...)
		}
	case interface{ Unwrap() []error }:
		for _, w := range u.Unwrap() {
			out = append(out, tree(w)...)
		}
	}
	return out
}

// renamedError is an error whose text named settings in a form made before
// named saw it (fmt.Errorf makes its text at once); errors.As and
// errors.Is still see what it wraps.
type renamedError struct {
	error
	text string
}

func (e *renamedError) Error() string { return e.text }
func (e *renamedError) Unwrap() error { return e.error }
