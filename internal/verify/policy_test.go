//go:build !noverify

package verify_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
)

func TestParsePolicy(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(priv.Public())
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	privDER, _ := x509.MarshalECPrivateKey(priv)
	privPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: privDER}))
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "cosign.pub")
	if err := os.WriteFile(keyFile, []byte(pub), 0o644); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name      string
		in        map[string]string
		wantInput string // the input a BadInputError must name; "" for success
		check     func(t *testing.T, p *verify.Policy)
	}{
		{name: "off by default", in: map[string]string{}, check: func(t *testing.T, p *verify.Policy) {
			if p != nil {
				t.Errorf("policy %+v, want nil", p)
			}
		}},
		{name: "explicitly off", in: map[string]string{"verify": "false"}, check: func(t *testing.T, p *verify.Policy) {
			if p != nil {
				t.Errorf("policy %+v, want nil", p)
			}
		}},
		{name: "a verify-* input without verify", in: map[string]string{"verify-key": pub}, wantInput: "verify-key"},
		{name: "unknown method", in: map[string]string{"verify": "gpg"}, wantInput: "verify"},
		{name: "key inline", in: map[string]string{"verify": "Cosign-Key", "verify-key": pub}, check: func(t *testing.T, p *verify.Policy) {
			if p.Method != verify.CosignKey || string(p.PublicKey) != strings.TrimSpace(pub) {
				t.Errorf("policy %+v", p)
			}
		}},
		{name: "key from a file", in: map[string]string{"verify": "cosign-key", "verify-key": keyFile}, check: func(t *testing.T, p *verify.Policy) {
			if string(p.PublicKey) != pub {
				t.Errorf("key %q, want the file's content", p.PublicKey)
			}
		}},
		{name: "key missing", in: map[string]string{"verify": "cosign-key"}, wantInput: "verify-key"},
		{name: "key file missing", in: map[string]string{"verify": "cosign-key", "verify-key": filepath.Join(dir, "nope.pub")}, wantInput: "verify-key"},
		{name: "a private key given as the key", in: map[string]string{"verify": "cosign-key", "verify-key": privPEM}, wantInput: "verify-key"},
		{name: "an input of another method", in: map[string]string{"verify": "cosign-key", "verify-key": pub, "verify-identity": "x"}, wantInput: "verify-identity"},
		{name: "keyless without identity", in: map[string]string{"verify": "cosign-keyless", "verify-issuer": verify.GitHubIssuer}, wantInput: "verify-identity"},
		{name: "keyless without issuer", in: map[string]string{"verify": "cosign-keyless", "verify-identity": workflow}, wantInput: "verify-issuer"},
		{name: "keyless with identity and regexp", in: map[string]string{"verify": "cosign-keyless", "verify-identity": workflow, "verify-identity-regexp": "^x", "verify-issuer": verify.GitHubIssuer}, wantInput: "verify-identity-regexp"},
		{name: "keyless with a bad regexp", in: map[string]string{"verify": "cosign-keyless", "verify-identity-regexp": "(", "verify-issuer": verify.GitHubIssuer}, wantInput: "verify-identity-regexp"},
		{name: "keyless, public-good root", in: map[string]string{"verify": "cosign-keyless", "verify-identity": workflow, "verify-issuer": verify.GitHubIssuer}, check: func(t *testing.T, p *verify.Policy) {
			if p.TrustedRoot != nil || p.Identity != workflow {
				t.Errorf("policy %+v", p)
			}
		}},
		{name: "a trusted root that is not one", in: map[string]string{"verify": "cosign-keyless", "verify-identity": workflow, "verify-issuer": verify.GitHubIssuer, "verify-trusted-root": `{"mediaType": "nope"}`}, wantInput: "verify-trusted-root"},
		{name: "attestation defaults", in: map[string]string{"verify": "github-attestation", "verify-repository": "octo/app"}, check: func(t *testing.T, p *verify.Policy) {
			if p.Issuer != verify.GitHubIssuer || p.PredicateType != verify.SLSAProvenanceV1 {
				t.Errorf("issuer %q, predicate %q", p.Issuer, p.PredicateType)
			}
		}},
		{name: "attestation without repository", in: map[string]string{"verify": "github-attestation"}, wantInput: "verify-repository"},
		{name: "attestation with a URL as repository", in: map[string]string{"verify": "github-attestation", "verify-repository": "https://github.com/octo/app"}, wantInput: "verify-repository"},
		{name: "signer workflow with a ref", in: map[string]string{"verify": "github-attestation", "verify-repository": "octo/app", "verify-signer-workflow": "octo/app/.github/workflows/release.yml@refs/heads/main"}, wantInput: "verify-signer-workflow"},
		{name: "attestation with a key", in: map[string]string{"verify": "github-attestation", "verify-repository": "octo/app", "verify-key": pub}, wantInput: "verify-key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := verify.ParsePolicy(func(n string) string { return tc.in[n] })
			if tc.wantInput == "" {
				if err != nil {
					t.Fatal(err)
				}
				tc.check(t, p)
				return
			}
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != tc.wantInput || bad.Fix == "" {
				t.Fatalf("got %v (policy %+v), want a bad-input error naming %s with a fix", err, p, tc.wantInput)
			}
			if strings.Contains(err.Error(), privPEM[40:80]) {
				t.Errorf("the error repeats the private key: %v", err)
			}
		})
	}
}
