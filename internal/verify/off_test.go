//go:build noverify

package verify_test

import (
	"errors"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
)

// TestParsePolicyNotCompiled: a build without verification refuses every
// method by name instead of pulling unverified images.
func TestParsePolicyNotCompiled(t *testing.T) {
	if p, err := verify.ParsePolicy(func(string) string { return "" }); p != nil || err != nil {
		t.Fatalf("verification off: %v, %v", p, err)
	}
	for _, m := range []verify.Method{verify.CosignKey, verify.CosignKeyless, verify.GitHubAttestation} {
		in := map[string]string{"verify": string(m), "verify-key": "k", "verify-identity": "i", "verify-issuer": "x", "verify-repository": "o/r"}
		p, err := verify.ParsePolicy(func(n string) string { return in[n] })
		var bad *failure.BadInput
		if p != nil || !errors.As(err, &bad) || bad.Input != "verify" {
			t.Errorf("%s: %v, %v; want a bad-input error naming verify", m, p, err)
		}
	}
}
