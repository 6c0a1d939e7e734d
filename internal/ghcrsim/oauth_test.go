package ghcrsim

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// containerd asks for tokens with the OAuth2 password grant whenever it has
// a secret; the answer must be what the GET form would give.
func TestOAuthPasswordGrant(t *testing.T) {
	s, host := start(t)
	post := func(form url.Values) (int, string) {
		t.Helper()
		resp, err := http.PostForm("http://"+host+"/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.AccessToken
	}
	grant := func(user, password, scope string) url.Values {
		return url.Values{"grant_type": {"password"}, "username": {user}, "password": {password},
			"service": {s.Service()}, "client_id": {"containerd-client"}, "scope": {scope}}
	}

	code, token := post(grant("reader", "readerpw", "repository:acme/private:pull"))
	if code != http.StatusOK || token == "" {
		t.Fatalf("good credentials: %d, token %q", code, token)
	}
	grants, err := s.sign.verify(token)
	if err != nil || len(grants) != 1 || grants[0].Name != "acme/private" {
		t.Fatalf("grants %+v, %v", grants, err)
	}
	if code, _ := post(grant("reader", "wrong", "repository:acme/public:pull")); code != http.StatusForbidden {
		t.Errorf("rejected credentials: %d, want 403 as on GET", code)
	}
	if code, _ := post(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}}); code != http.StatusBadRequest {
		t.Errorf("unsupported grant: %d, want 400 (containerd then falls back to GET)", code)
	}
	s.SetOAuthStatus(http.StatusForbidden)
	if code, _ := post(grant("reader", "readerpw", "repository:acme/private:pull")); code != http.StatusForbidden {
		t.Errorf("with SetOAuthStatus(403): %d", code)
	}
	s.SetOAuthStatus(0)
	var logged bool
	for _, r := range s.Requests() {
		if r.Method == http.MethodPost && r.BasicPassword == "wrong" && strings.Contains(r.Scope, "acme/public") {
			logged = true
		}
	}
	if !logged {
		t.Errorf("the request log does not show the form's credentials: %+v", s.Requests())
	}
}
