package kube

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

const kcHead = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
contexts:
- name: ctx
  context: {cluster: c, user: u, namespace: team}
current-context: ctx
users:
- name: u
  user:
`

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, user, context, namespace, selector string
		timeout                                  time.Duration
		badInput                                 string // the input named, "" for success
		secret                                   string
	}{
		{name: "token", user: "    token: tok-secret-1", secret: "tok-secret-1"},
		{name: "client certificate", user: "    client-certificate-data: Y2VydA==\n    client-key-data: a2V5LXNlY3JldA==", secret: "key-secret"},
		{name: "basic", user: "    username: admin\n    password: pw-secret", secret: "pw-secret"},
		{name: "exec plugin refused", user: "    exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}", badInput: "Kubeconfig"},
		{name: "auth provider refused", user: "    auth-provider: {name: gcp}", badInput: "Kubeconfig"},
		{name: "token file refused", user: "    tokenFile: /var/run/token", badInput: "Kubeconfig"},
		{name: "unknown context", user: "    token: t", context: "prod", badInput: "Context"},
		{name: "bad namespace", user: "    token: t", namespace: "Not_A_Name", badInput: "Namespace"},
		{name: "bad selector", user: "    token: t", selector: "a in (", badInput: "Selector"},
		{name: "zero timeout", user: "    token: t", timeout: -1, badInput: "Timeout"},
		{name: "token and password", user: "    token: t\n    username: a\n    password: p", badInput: "Kubeconfig"},
		{name: "certificate without key", user: "    client-certificate-data: Y2VydA==", badInput: "Kubeconfig"},
		{name: "key data not base64", user: "    client-certificate-data: Y2VydA==\n    client-key-data: '%%secret'", badInput: "Kubeconfig"},
		{name: "impersonation", user: "    token: tok-secret-2\n    as: deployer\n    as-groups: [ci]", secret: "tok-secret-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			timeout := tc.timeout
			if timeout == 0 {
				timeout = time.Minute
			}
			cfg, err := ParseConfig(kcHead+tc.user+"\n", tc.context, tc.namespace, tc.selector, timeout)
			if tc.badInput != "" {
				var bi *failure.BadInput
				if !errors.As(err, &bi) || bi.Input != tc.badInput || bi.Fix == "" {
					t.Fatalf("err = %v, want bad input %s", err, tc.badInput)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error quotes a secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Namespace != "team" || cfg.Server != "https://127.0.0.1:6443" {
				t.Errorf("cfg = %+v", cfg)
			}
			found := false
			for _, s := range cfg.Secrets() {
				found = found || strings.Contains(s, tc.secret)
			}
			if !found {
				t.Errorf("Secrets() = %q, want %q among them", cfg.Secrets(), tc.secret)
			}
		})
	}
	if _, err := ParseConfig("{not yaml: [", "", "", "", time.Minute); err == nil {
		t.Error("garbage parsed")
	}
}

// The kubeconfig checks clientcmd makes on the cluster entry, and JSON.
func TestParseConfigCluster(t *testing.T) {
	user := "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\ncurrent-context: c\n"
	for _, tc := range []struct{ name, cluster, want string }{
		{"no server", "clusters: [{name: k, cluster: {}}]\n", "no server URL"},
		{"server without scheme", "clusters: [{name: k, cluster: {server: 'example.com:6443'}}]\n", "no server URL"},
		{"CA and insecure", "clusters: [{name: k, cluster: {server: 'https://k:6443', insecure-skip-tls-verify: true, certificate-authority-data: Y2E=}}]\n", "keep one"},
		{"CA file", "clusters: [{name: k, cluster: {server: 'https://k:6443', certificate-authority: /etc/ca.crt}}]\n", "certificate-authority file"},
		{"missing cluster", "clusters: [{name: other, cluster: {server: 'https://k:6443'}}]\n", "does not have"},
		{"bad proxy", "clusters: [{name: k, cluster: {server: 'https://k:6443', proxy-url: '::'}}]\n", "proxy-url"},
	} {
		_, err := ParseConfig(tc.cluster+user, "", "", "", time.Minute)
		var bi *failure.BadInput
		if !errors.As(err, &bi) || bi.Input != "Kubeconfig" || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want bad input kubeconfig saying %q", tc.name, err, tc.want)
		}
	}
	cfg, err := ParseConfig(`{"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "k", "cluster": {"server": "https://k:6443/", "proxy-url": "http://proxy:3128"}}],
		"users": [{"name": "u", "user": {"token": "json-token"}}], "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}], "current-context": "c"}`, "", "", "", time.Minute)
	if err != nil || cfg.Server != "https://k:6443" || cfg.Namespace != "default" || !slices.Equal(cfg.Secrets(), []string{"json-token"}) || cfg.transport.Proxy == nil {
		t.Errorf("JSON kubeconfig: %+v, %v", cfg, err)
	}
}
