package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestOIDC: the workflow's ID token (from a fake Actions runtime) is
// exchanged at an RFC 8693 endpoint for a credential the real registry's
// token server accepts; the pull into the real dockerd reports oidc.
func TestOIDC(t *testing.T) {
	e := Start(t)
	derived := "oidc-derived-" + randomHex(8)
	// The fake Actions runtime: it keeps api-version in the request URL's
	// query and adds the audience, or refuses.
	issuer, err := newIDIssuer()
	if err != nil {
		t.Fatal(err)
	}
	defer issuer.Close()
	lastJWT := func() string {
		if all := issuer.Issued(); len(all) > 0 {
			return all[len(all)-1]
		}
		return ""
	}
	answer := derived
	exchange := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.Method != http.MethodPost || r.PostForm.Get("subject_token") != lastJWT() || !strings.Contains(jwtClaims(lastJWT()), `"aud":"ghcr-pull-test"`) ||
			r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" {
			t.Errorf("exchange got %s with form %v", r.Method, r.PostForm)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, `{"access_token":%q,"username":"oidc-user","token_type":"Bearer"}`, answer)
	}))
	defer exchange.Close()

	e.Front.AddUser("oidc-user", derived, false, "acme/oidc-private")
	privDigest := e.PushRandomImage(t, "acme/oidc-private", "1")
	e.PushRandomImage(t, "acme/oidc-public", "1")
	e.Front.SetPublic("acme/oidc-public")
	runtimeEnv := issuer.Env()
	inputs := func(repo string) map[string]string {
		return map[string]string{"image": e.Host + "/" + repo + ":1", "oidc-provider": "token-exchange",
			"token-exchange-url": exchange.URL, "oidc-audience": "ghcr-pull-test"}
	}
	noLeaks := func(t *testing.T, res Result) {
		for _, s := range append(issuer.Issued(), derived, idRequestTok) {
			assertNoSecretLeak(t, res, s)
		}
		if strings.Contains(res.Stdout, idRequestTok) {
			t.Errorf("the runtime's request token was printed")
		}
	}

	t.Run("derived credentials pull a private image", func(t *testing.T) {
		ref := e.Host + "/acme/oidc-private:1"
		e.RemoveLocalImage(t, ref)
		res := e.RunAction(t, inputs("acme/oidc-private"), runtimeEnv...)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		if res.Outputs["auth-mode"] != "oidc" || res.Outputs["digest"] != privDigest || rs[0]["oidc_provider"] != "token-exchange" {
			t.Errorf("outputs %v", res.Outputs)
		}
		if !strings.Contains(res.Stdout, "::add-mask::"+lastJWT()) || !strings.Contains(res.Stdout, "::add-mask::"+derived) {
			t.Errorf("ID token or derived credential not masked")
		}
		noLeaks(t, res)
	})

	t.Run("rejected derived credentials fall back on a public repository", func(t *testing.T) {
		answer = "not-known-to-the-registry"
		defer func() { answer = derived }()
		res := e.RunAction(t, inputs("acme/oidc-public"), runtimeEnv...)
		if res.ExitCode != 0 || res.Outputs["auth-mode"] != "anonymous" || res.Outputs["fallback-used"] != "true" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		noLeaks(t, res)
	})

	t.Run("without id-token: write, the error says so", func(t *testing.T) {
		res := e.RunAction(t, inputs("acme/oidc-private"))
		if res.ExitCode != 2 || !strings.Contains(res.Stdout, "id-token: write") || !strings.Contains(res.Stdout, "::error") {
			t.Fatalf("exit %d, want 2 naming id-token: write\n%s", res.ExitCode, res.Stdout)
		}
	})
}
