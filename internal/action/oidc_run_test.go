package action

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// deriveOIDC's failure classes as a workflow sees them: a job without
// id-token: write is a bad input (exit 2) that says what to add; an ID
// token endpoint fault is retried, then fails; a provider's refusal is not
// retried and quotes the provider.
func TestOIDCFailureClasses(t *testing.T) {
	jwt := fakeJWT(t)
	var exchanges atomic.Int32
	exchange := provider(t, func(w http.ResponseWriter, r *http.Request) {
		exchanges.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": "subject repo:acme/app is not trusted"})
	})
	inputs := map[string]string{"image": "ghcr.io/acme/app:1", "auth": "oidc", "oidc-provider": "token-exchange",
		"token-exchange-url": exchange + "/token", "retries": "1", "destination": "none"}

	t.Run("no id-token permission", func(t *testing.T) {
		s := runStep(t, inputs, nil) // ACTIONS_ID_TOKEN_REQUEST_URL unset
		if s.code != ExitBadInput {
			t.Fatalf("exit %d, want %d:\n%s", s.code, ExitBadInput, s.stdout)
		}
		_, shown := logText(s.stdout)
		if !strings.Contains(shown, "::error title=ghcr-pull: OIDC credentials could not be derived::") ||
			!strings.Contains(shown, `"permissions"`) || !strings.Contains(shown, "id-token: write") {
			t.Errorf("the error does not name permissions / id-token: write:\n%s", shown)
		}
		if exchanges.Load() != 0 {
			t.Errorf("the provider was called")
		}
	})
	t.Run("ID token endpoint 5xx is retried, then fails", func(t *testing.T) {
		env, requests := idTokenEndpoint(t, jwt, http.StatusServiceUnavailable)
		s := runStep(t, inputs, env)
		if s.code != ExitFailed {
			t.Fatalf("exit %d, want %d:\n%s", s.code, ExitFailed, s.stdout)
		}
		if n := requests.Load(); n != 2 {
			t.Errorf("%d ID token requests, want 2 (retries: 1)", n)
		}
		_, shown := logText(s.stdout)
		if !strings.Contains(shown, "503") || !strings.Contains(shown, "Actions ID token endpoint") {
			t.Errorf("the error does not say the ID token endpoint answered 503:\n%s", shown)
		}
		if exchanges.Load() != 0 {
			t.Errorf("the provider was called without an ID token")
		}
	})
	t.Run("provider 400 quotes the provider, not retried", func(t *testing.T) {
		env, requests := idTokenEndpoint(t, jwt, 0)
		before := exchanges.Load()
		s := runStep(t, inputs, env)
		if s.code != ExitFailed {
			t.Fatalf("exit %d, want %d:\n%s", s.code, ExitFailed, s.stdout)
		}
		if n := exchanges.Load() - before; n != 1 || requests.Load() != 1 {
			t.Errorf("%d exchanges and %d ID token requests, want 1 each: a 400 is not retried", n, requests.Load())
		}
		_, shown := logText(s.stdout)
		if !strings.Contains(shown, "invalid_grant: subject repo:acme/app is not trusted") || !strings.Contains(shown, "400") {
			t.Errorf("the error lacks the provider's words:\n%s", shown)
		}
	})
}
