// Package kube is the runtime adapter for a Kubernetes cluster: it reaches
// the API server from a kubeconfig held in memory and pre-pulls one image
// onto every selected node with a short-lived DaemonSet (and, with
// credentials, a pull Secret), reporting each node and deleting all it made.
// It knows nothing of policy: which credentials to send and whether to fall
// back is decided by its caller.
package kube

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Config is a parsed, validated cluster destination.
type Config struct {
	rest      *rest.Config
	secrets   []string
	Namespace string
	// Selector picks the nodes; empty selects all.
	Selector labels.Selector
	// Timeout bounds the wait for the nodes (creation and clean-up aside).
	Timeout time.Duration
	// Server is the API server's URL, for messages.
	Server string
}

// Secrets lists what the kubeconfig holds that must never be printed: the
// bearer token, the client key, the password.
func (c Config) Secrets() []string { return c.secrets }

func bad(input, problem, fix string) error {
	return &failure.BadInput{Input: input, Problem: problem, Fix: fix}
}

// ParseConfig parses a kubeconfig given as text (it is never written to
// disk) and picks a context (empty: the kubeconfig's current one). Exec and
// auth-provider plugins are refused: they would run programs or reach cloud
// identity services the action does not manage.
func ParseConfig(kubeconfig, context, namespace, nodeSelector string, timeout time.Duration) (Config, error) {
	raw, err := clientcmd.Load([]byte(kubeconfig))
	if err != nil {
		// The loader's error may quote the document; name the input only.
		return Config{}, bad("kubeconfig", "is not a kubeconfig document (YAML or JSON)", "pass the whole kubeconfig file's text, e.g. from a secret: kubeconfig: ${{ secrets.KUBECONFIG }}")
	}
	secrets := secretsOf(raw)
	name := context
	if name == "" {
		name = raw.CurrentContext
	}
	kctx, ok := raw.Contexts[name]
	if name == "" || !ok {
		return Config{}, bad("kube-context", fmt.Sprintf("context %q is not in the kubeconfig (it has %s)", name, contextNames(raw)),
			"set kube-context to one of the kubeconfig's contexts, or set current-context in it")
	}
	user := raw.AuthInfos[kctx.AuthInfo]
	if user != nil && (user.Exec != nil || user.AuthProvider != nil) {
		return Config{}, bad("kubeconfig", fmt.Sprintf("user %q authenticates through an exec or auth-provider plugin, which ghcr-pull does not run (cloud OIDC kubeconfigs are not supported yet)", kctx.AuthInfo),
			"give a kubeconfig whose user has a token, a client certificate and key, or a username and password (for example a ServiceAccount token)")
	}
	if user != nil && (user.TokenFile != "" || user.ClientCertificate != "" || user.ClientKey != "") {
		return Config{}, bad("kubeconfig", fmt.Sprintf("user %q names files (tokenFile, client-certificate, client-key); the kubeconfig is read from memory only", kctx.AuthInfo),
			"embed them: token, client-certificate-data, client-key-data")
	}
	if c := raw.Clusters[kctx.Cluster]; c != nil && c.CertificateAuthority != "" {
		return Config{}, bad("kubeconfig", fmt.Sprintf("cluster %q names a certificate-authority file; the kubeconfig is read from memory only", kctx.Cluster),
			"embed it as certificate-authority-data")
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*raw, name, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
	if err != nil {
		return Config{}, bad("kubeconfig", "context "+name+" is incomplete: "+redactAll(err.Error(), secrets), "check its cluster server and user entries")
	}
	if namespace == "" {
		namespace = kctx.Namespace
	}
	if namespace == "" {
		namespace = "default"
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return Config{}, bad("kube-namespace", fmt.Sprintf("%q is not a namespace name: %s", namespace, strings.Join(errs, "; ")), "use a namespace that exists, e.g. default")
	}
	sel, err := labels.Parse(nodeSelector)
	if err != nil {
		return Config{}, bad("kube-node-selector", fmt.Sprintf("%q is not a label selector: %v", nodeSelector, err), "write it as kubectl -l takes it, e.g. kubernetes.io/os=linux,pool in (a,b)")
	}
	if timeout <= 0 {
		return Config{}, bad("kube-timeout", "must be positive", "e.g. 5m")
	}
	rc.UserAgent = "ghcr-pull"
	return Config{rest: rc, secrets: secrets, Namespace: namespace, Selector: sel, Timeout: timeout, Server: rc.Host}, nil
}

func secretsOf(raw *clientcmdapi.Config) []string {
	var out []string
	for _, u := range raw.AuthInfos {
		for _, s := range []string{u.Token, u.Password, string(u.ClientKeyData)} {
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

func contextNames(raw *clientcmdapi.Config) string {
	names := slices.Sorted(maps.Keys(raw.Contexts))
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
