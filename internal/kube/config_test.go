package kube

import (
	"errors"
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
		{name: "exec plugin refused", user: "    exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}", badInput: "kubeconfig"},
		{name: "auth provider refused", user: "    auth-provider: {name: gcp}", badInput: "kubeconfig"},
		{name: "token file refused", user: "    tokenFile: /var/run/token", badInput: "kubeconfig"},
		{name: "unknown context", user: "    token: t", context: "prod", badInput: "kube-context"},
		{name: "bad namespace", user: "    token: t", namespace: "Not_A_Name", badInput: "kube-namespace"},
		{name: "bad selector", user: "    token: t", selector: "a in (", badInput: "kube-node-selector"},
		{name: "zero timeout", user: "    token: t", timeout: -1, badInput: "kube-timeout"},
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
