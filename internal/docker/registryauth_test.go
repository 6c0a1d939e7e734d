package docker

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// With a registry token the daemon gets the token and nothing else: the
// long-lived password never reaches it.
func TestRegistryAuthPrefersTheScopedToken(t *testing.T) {
	for _, tt := range []struct {
		name  string
		creds registryauth.Credentials
		want  map[string]string
	}{
		{"anonymous", registryauth.Anonymous, nil},
		{"anonymous with the probe's token", registryauth.Credentials{Mode: registryauth.ModeAnonymous, RegistryToken: "anonymous.jwt.token"}, map[string]string{"registrytoken": "anonymous.jwt.token"}},
		{"password", registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "long-lived-secret"}, map[string]string{"username": "u", "password": "long-lived-secret"}},
		{"token", registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "long-lived-secret", RegistryToken: "scoped.jwt.token"}, map[string]string{"registrytoken": "scoped.jwt.token"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			enc, err := RegistryAuth(tt.creds)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if enc != "" {
					t.Fatalf("anonymous sent %q", enc)
				}
				return
			}
			raw, err := base64.URLEncoding.DecodeString(enc)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]string
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q (all: %s)", k, got[k], v, raw)
				}
			}
			if tt.creds.RegistryToken != "" && strings.Contains(string(raw), "long-lived-secret") {
				t.Errorf("the password went along with the token: %s", raw)
			}
		})
	}
}
