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
		in        map[verify.Setting]string
		wantInput verify.Setting // the setting a BadInput must name; "" for success
		check     func(t *testing.T, p *verify.Policy)
	}{
		{name: "off by default", in: map[verify.Setting]string{}, check: func(t *testing.T, p *verify.Policy) {
			if p != nil {
				t.Errorf("policy %+v, want nil", p)
			}
		}},
		{name: "explicitly off", in: map[verify.Setting]string{verify.SettingMethod: "false"}, check: func(t *testing.T, p *verify.Policy) {
			if p != nil {
				t.Errorf("policy %+v, want nil", p)
			}
		}},
		{name: "a verify-* input without verify", in: map[verify.Setting]string{verify.SettingKey: pub}, wantInput: verify.SettingKey},
		{name: "unknown method", in: map[verify.Setting]string{verify.SettingMethod: "gpg"}, wantInput: verify.SettingMethod},
		{name: "key inline", in: map[verify.Setting]string{verify.SettingMethod: "Cosign-Key", verify.SettingKey: pub}, check: func(t *testing.T, p *verify.Policy) {
			if p.Method != verify.CosignKey || string(p.PublicKey) != strings.TrimSpace(pub) {
				t.Errorf("policy %+v", p)
			}
		}},
		{name: "key from a file", in: map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: keyFile}, check: func(t *testing.T, p *verify.Policy) {
			if string(p.PublicKey) != pub {
				t.Errorf("key %q, want the file's content", p.PublicKey)
			}
		}},
		{name: "key missing", in: map[verify.Setting]string{verify.SettingMethod: "cosign-key"}, wantInput: verify.SettingKey},
		{name: "key file missing", in: map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: filepath.Join(dir, "nope.pub")}, wantInput: verify.SettingKey},
		{name: "a private key given as the key", in: map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: privPEM}, wantInput: verify.SettingKey},
		{name: "an input of another method", in: map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: pub, verify.SettingIdentity: "x"}, wantInput: verify.SettingIdentity},
		{name: "keyless without identity", in: map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIssuer: verify.GitHubIssuer}, wantInput: verify.SettingIdentity},
		{name: "keyless without issuer", in: map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentity: workflow}, wantInput: verify.SettingIssuer},
		{name: "keyless with identity and regexp", in: map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentity: workflow, verify.SettingIdentityRegexp: "^x", verify.SettingIssuer: verify.GitHubIssuer}, wantInput: verify.SettingIdentityRegexp},
		{name: "keyless with a bad regexp", in: map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentityRegexp: "(", verify.SettingIssuer: verify.GitHubIssuer}, wantInput: verify.SettingIdentityRegexp},
		{name: "keyless, public-good root", in: map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentity: workflow, verify.SettingIssuer: verify.GitHubIssuer}, check: func(t *testing.T, p *verify.Policy) {
			if p.TrustedRoot != nil || p.Identity != workflow {
				t.Errorf("policy %+v", p)
			}
		}},
		{name: "a trusted root that is not one", in: map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentity: workflow, verify.SettingIssuer: verify.GitHubIssuer, verify.SettingTrustedRoot: `{"mediaType": "nope"}`}, wantInput: verify.SettingTrustedRoot},
		{name: "attestation defaults", in: map[verify.Setting]string{verify.SettingMethod: "github-attestation", verify.SettingRepository: "octo/app"}, check: func(t *testing.T, p *verify.Policy) {
			if p.Issuer != verify.GitHubIssuer || p.PredicateType != verify.SLSAProvenanceV1 {
				t.Errorf("issuer %q, predicate %q", p.Issuer, p.PredicateType)
			}
		}},
		{name: "attestation without repository", in: map[verify.Setting]string{verify.SettingMethod: "github-attestation"}, wantInput: verify.SettingRepository},
		{name: "attestation with a URL as repository", in: map[verify.Setting]string{verify.SettingMethod: "github-attestation", verify.SettingRepository: "https://github.com/octo/app"}, wantInput: verify.SettingRepository},
		{name: "signer workflow with a ref", in: map[verify.Setting]string{verify.SettingMethod: "github-attestation", verify.SettingRepository: "octo/app", verify.SettingSignerWorkflow: "octo/app/.github/workflows/release.yml@refs/heads/main"}, wantInput: verify.SettingSignerWorkflow},
		{name: "attestation with a key", in: map[verify.Setting]string{verify.SettingMethod: "github-attestation", verify.SettingRepository: "octo/app", verify.SettingKey: pub}, wantInput: verify.SettingKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := verify.ParsePolicy(func(n verify.Setting) string { return tc.in[n] })
			if tc.wantInput == "" {
				if err != nil {
					t.Fatal(err)
				}
				tc.check(t, p)
				return
			}
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != string(tc.wantInput) || bad.Fix == "" {
				t.Fatalf("got %v (policy %+v), want a bad-input error naming %s with a fix", err, p, tc.wantInput)
			}
			if strings.Contains(err.Error(), privPEM[40:80]) {
				t.Errorf("the error repeats the private key: %v", err)
			}
		})
	}
}
