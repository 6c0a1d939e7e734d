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
	if p, err := verify.ParsePolicy(func(verify.Setting) string { return "" }); p != nil || err != nil {
		t.Fatalf("verification off: %v, %v", p, err)
	}
	for _, m := range []verify.Method{verify.CosignKey, verify.CosignKeyless, verify.GitHubAttestation} {
		in := map[verify.Setting]string{verify.SettingMethod: string(m), verify.SettingKey: "k", verify.SettingIdentity: "i", verify.SettingIssuer: "x", verify.SettingRepository: "o/r"}
		p, err := verify.ParsePolicy(func(n verify.Setting) string { return in[n] })
		var bad *failure.BadInput
		if p != nil || !errors.As(err, &bad) || bad.Input != string(verify.SettingMethod) {
			t.Errorf("%s: %v, %v; want a bad-input error naming the method", m, p, err)
		}
	}
}
