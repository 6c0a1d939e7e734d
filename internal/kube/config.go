// Package kube is the runtime adapter for a Kubernetes cluster: it reaches
// the API server from a kubeconfig held in memory and pre-pulls one image
// onto every selected node with a short-lived DaemonSet (and, with
// credentials, a pull Secret), reporting each node and deleting all it made.
// It knows nothing of policy: which credentials to send and whether to fall
// back is decided by its caller. A *Config is the pull policy's Fleet
// (fleet.go), so nothing adapts it: pull calls down into it directly.
package kube

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/transport"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Config is a parsed, validated cluster destination.
type Config struct {
	// transport is client-go's TLS and authentication, without its REST
	// machinery (see client.go).
	transport *transport.Config
	secrets   []string
	Namespace string
	// Selector picks the nodes; empty selects all.
	Selector labels.Selector
	// Timeout bounds the wait for the nodes (creation and clean-up aside).
	Timeout time.Duration
	// Server is the API server's URL, for messages.
	Server string
	// tokens is a keyless cluster's refreshing token (auth.go), nil with
	// a kubeconfig; refusal words its 401.
	tokens  *tokenCache
	refusal refusal
}

// refusal words a 401: the input to change, the identity, the fix.
// unreachable, when set, is the fix for an endpoint the runner cannot
// reach (a private cluster endpoint).
type refusal struct{ input, who, fix, unreachable string }

func (r refusal) orKubeconfig() refusal {
	if r.input == "" {
		return refusal{input: "kubeconfig", who: "the kubeconfig's credentials", fix: "renew the token or certificate in the kubeconfig"}
	}
	return r
}

// Secrets lists what the kubeconfig holds that must never be printed: the
// bearer token, the client key, the password.
func (c Config) Secrets() []string { return c.secrets }

// redact removes every secret of the config from s: the kubeconfig's and
// each token minted so far.
func (c Config) redact(s string) string {
	return redactAll(s, append(c.Secrets(), c.tokens.secrets()...))
}

// kubeconfig is the part of a kubeconfig document (clientcmd's v1 Config)
// that ghcr-pull reads. Fields it refuses are decoded to be named.
type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string
		Cluster kubeCluster
	}
	Users []struct {
		Name string
		User kubeUser
	}
	Contexts []struct {
		Name    string
		Context kubeContext
	}
}

type kubeContext struct{ Cluster, User, Namespace string }

type kubeCluster struct {
	Server        string `yaml:"server"`
	CAData        string `yaml:"certificate-authority-data"`
	CAFile        string `yaml:"certificate-authority"`
	Insecure      bool   `yaml:"insecure-skip-tls-verify"`
	TLSServerName string `yaml:"tls-server-name"`
	ProxyURL      string `yaml:"proxy-url"`
}

type kubeUser struct {
	Token        string              `yaml:"token"`
	TokenFile    string              `yaml:"tokenFile"`
	CertData     string              `yaml:"client-certificate-data"`
	CertFile     string              `yaml:"client-certificate"`
	KeyData      string              `yaml:"client-key-data"`
	KeyFile      string              `yaml:"client-key"`
	Username     string              `yaml:"username"`
	Password     string              `yaml:"password"`
	As           string              `yaml:"as"`
	AsUID        string              `yaml:"as-uid"`
	AsGroups     []string            `yaml:"as-groups"`
	AsUserExtra  map[string][]string `yaml:"as-user-extra"`
	Exec         *yaml.Node          `yaml:"exec"`
	AuthProvider *yaml.Node          `yaml:"auth-provider"`
}

// ParseConfig parses a kubeconfig given as text (it is never written to
// disk) and picks a context (empty: the kubeconfig's current one). Exec and
// auth-provider plugins are refused: they would run programs or reach cloud
// identity services the action does not manage. The document is read as
// clientcmd reads it, with the same checks; clientcmd itself is not used,
// as it links client-go's REST machinery (4 MiB of the binary).
func ParseConfig(kubeconfigText, context, namespace, nodeSelector string, timeout time.Duration) (Config, error) {
	var raw kubeconfig
	if err := yaml.Unmarshal([]byte(kubeconfigText), &raw); err != nil {
		// The parser's error may quote the document; name the input only.
		return Config{}, failure.Bad("kubeconfig", "is not a kubeconfig document (YAML or JSON)", "pass the whole kubeconfig file's text, e.g. from a secret: kubeconfig: ${{ secrets.KUBECONFIG }}")
	}
	secrets := secretsOf(raw)
	name := context
	if name == "" {
		name = raw.CurrentContext
	}
	var kctx *kubeContext
	for _, c := range raw.Contexts {
		if c.Name == name {
			kctx = &c.Context
			break
		}
	}
	if name == "" || kctx == nil {
		return Config{}, failure.Bad("kube-context", fmt.Sprintf("context %q is not in the kubeconfig (it has %s)", name, contextNames(raw)),
			"set kube-context to one of the kubeconfig's contexts, or set current-context in it")
	}
	var user kubeUser
	for _, u := range raw.Users {
		if u.Name == kctx.User {
			user = u.User
			break
		}
	}
	if user.Exec != nil || user.AuthProvider != nil {
		return Config{}, failure.Bad("kubeconfig", fmt.Sprintf("user %q authenticates through an exec or auth-provider plugin, which ghcr-pull does not run (cloud OIDC kubeconfigs are not supported yet)", kctx.User),
			"give a kubeconfig whose user has a token, a client certificate and key, or a username and password (for example a ServiceAccount token)")
	}
	if user.TokenFile != "" || user.CertFile != "" || user.KeyFile != "" {
		return Config{}, failure.Bad("kubeconfig", fmt.Sprintf("user %q names files (tokenFile, client-certificate, client-key); the kubeconfig is read from memory only", kctx.User),
			"embed them: token, client-certificate-data, client-key-data")
	}
	var cluster *kubeCluster
	for _, c := range raw.Clusters {
		if c.Name == kctx.Cluster {
			cluster = &c.Cluster
			break
		}
	}
	if cluster == nil {
		return Config{}, failure.Bad("kubeconfig", fmt.Sprintf("context %s names cluster %q, which the kubeconfig does not have", name, kctx.Cluster), "check its cluster and context entries")
	}
	if cluster.CAFile != "" {
		return Config{}, failure.Bad("kubeconfig", fmt.Sprintf("cluster %q names a certificate-authority file; the kubeconfig is read from memory only", kctx.Cluster),
			"embed it as certificate-authority-data")
	}
	incomplete := func(problem string) error {
		return failure.Bad("kubeconfig", "context "+name+" is incomplete: "+problem, "check its cluster server and user entries")
	}
	server, err := url.Parse(cluster.Server)
	if cluster.Server == "" || err != nil || (server.Scheme != "https" && server.Scheme != "http") || server.Host == "" {
		return Config{}, incomplete(fmt.Sprintf("cluster %q has no server URL (https://host:port)", kctx.Cluster))
	}
	tc := &transport.Config{
		UserAgent:   "ghcr-pull",
		BearerToken: user.Token, Username: user.Username, Password: user.Password,
		Impersonate: transport.ImpersonationConfig{UserName: user.As, UID: user.AsUID, Groups: user.AsGroups, Extra: user.AsUserExtra},
		TLS:         transport.TLSConfig{Insecure: cluster.Insecure, ServerName: cluster.TLSServerName},
	}
	for _, f := range []struct {
		field, value string
		into         *[]byte
	}{
		{"certificate-authority-data", cluster.CAData, &tc.TLS.CAData},
		{"client-certificate-data", user.CertData, &tc.TLS.CertData},
		{"client-key-data", user.KeyData, &tc.TLS.KeyData},
	} {
		if f.value == "" {
			continue
		}
		if *f.into, err = base64.StdEncoding.DecodeString(strings.TrimSpace(f.value)); err != nil {
			return Config{}, incomplete(f.field + " is not base64")
		}
	}
	switch {
	case (len(tc.TLS.CertData) > 0) != (len(tc.TLS.KeyData) > 0):
		return Config{}, incomplete(fmt.Sprintf("user %q has a client certificate without its key, or a key without its certificate", kctx.User))
	case tc.BearerToken != "" && (tc.Username != "" || tc.Password != ""):
		return Config{}, incomplete(fmt.Sprintf("user %q has both a token and a username/password; keep one", kctx.User))
	case cluster.Insecure && len(tc.TLS.CAData) > 0:
		return Config{}, incomplete(fmt.Sprintf("cluster %q has both certificate-authority-data and insecure-skip-tls-verify; keep one", kctx.Cluster))
	}
	if cluster.ProxyURL != "" {
		proxy, err := url.Parse(cluster.ProxyURL)
		if err != nil || proxy.Host == "" {
			return Config{}, incomplete(fmt.Sprintf("cluster %q has a proxy-url that is not a URL", kctx.Cluster))
		}
		tc.Proxy = http.ProxyURL(proxy)
	}
	if namespace == "" {
		namespace = kctx.Namespace
	}
	cfg := Config{transport: tc, secrets: secrets, Server: strings.TrimSuffix(server.String(), "/")}
	return cfg.settle(namespace, nodeSelector, timeout)
}

// settle validates and sets what any cluster destination has besides its
// credentials: the namespace, the node selector, the timeout.
func (c Config) settle(namespace, nodeSelector string, timeout time.Duration) (Config, error) {
	if namespace == "" {
		namespace = "default"
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return Config{}, failure.Bad("kube-namespace", fmt.Sprintf("%q is not a namespace name: %s", namespace, strings.Join(errs, "; ")), "use a namespace that exists, e.g. default")
	}
	sel, err := labels.Parse(nodeSelector)
	if err != nil {
		return Config{}, failure.Bad("kube-node-selector", fmt.Sprintf("%q is not a label selector: %v", nodeSelector, err), "write it as kubectl -l takes it, e.g. kubernetes.io/os=linux,pool in (a,b)")
	}
	if timeout <= 0 {
		return Config{}, failure.Bad("kube-timeout", "must be positive", "e.g. 5m")
	}
	c.Namespace, c.Selector, c.Timeout = namespace, sel, timeout
	return c, nil
}

func secretsOf(raw kubeconfig) []string {
	var out []string
	for _, u := range raw.Users {
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(u.User.KeyData))
		if err != nil {
			key = []byte(u.User.KeyData)
		}
		for _, s := range []string{u.User.Token, u.User.Password, string(key)} {
			if strings.TrimSpace(s) != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func redactAll(s string, secrets []string) string {
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, failure.Redacted)
	}
	return s
}

func contextNames(raw kubeconfig) string {
	var names []string
	for _, c := range raw.Contexts {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
