package oidc

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// fakeJWT is an unsigned ID token whose aud claim the fake providers check.
func fakeJWT(aud string) string {
	enc := base64.RawURLEncoding.EncodeToString
	claims, _ := json.Marshal(map[string]any{"iss": "https://token.actions.githubusercontent.com", "aud": aud, "sub": "repo:acme/app:ref:refs/heads/main"})
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(claims) + ".c2ln"
}

func audOf(t *testing.T, jwt string) string {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Errorf("subject token is not a JWT: %q", jwt)
		return ""
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		Aud string `json:"aud"`
	}
	_ = json.Unmarshal(b, &c)
	return c.Aud
}

// providers is one fake of every provider's documented protocol. mode
// "ok", "4xx" or "5xx" decides the answers.
type providers struct {
	t    *testing.T
	mode string
	mu   sync.Mutex
	seen []string
	// elsewhere is where redirect mode sends every request.
	elsewhere string
}

func (p *providers) fail(w http.ResponseWriter, body4xx string, ct string) bool {
	switch p.mode {
	case "4xx":
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(http.StatusBadRequest)
		if strings.Contains(body4xx, "ErrorResponse") {
			w.WriteHeader(http.StatusForbidden)
		}
		_, _ = io.WriteString(w, body4xx)
		return true
	case "5xx":
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	case "redirect":
		// 307 keeps the method and the body: followed, the ID token
		// would go to another host over plain http.
		w.Header().Set("Location", p.elsewhere+"/stolen?x=1")
		w.WriteHeader(http.StatusTemporaryRedirect)
		return true
	}
	return false
}

func (p *providers) form(r *http.Request, want map[string]string) url.Values {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		p.t.Errorf("%s: content type %q, want a form", r.URL.Path, ct)
	}
	_ = r.ParseForm()
	for k, v := range want {
		if got := r.PostForm.Get(k); got != v {
			p.t.Errorf("%s: form %s = %q, want %q", r.URL.Path, k, got, v)
		}
	}
	return r.PostForm
}

func (p *providers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.seen = append(p.seen, r.Method+" "+r.URL.Path)
	p.mu.Unlock()
	if r.Method != http.MethodPost {
		p.t.Errorf("%s %s: want POST", r.Method, r.URL.Path)
	}
	switch {
	case r.URL.Path == "/generic":
		f := p.form(r, map[string]string{"grant_type": tokenExchangeGrant, "subject_token_type": idTokenType})
		if audOf(p.t, f.Get("subject_token")) != "https://exchange.example/aud" {
			p.t.Errorf("generic: ID token audience %q", audOf(p.t, f.Get("subject_token")))
		}
		if p.fail(w, `{"error":"invalid_grant","error_description":"subject not allowed"}`, "application/json") {
			return
		}
		_, _ = io.WriteString(w, `{"access_token":"tx-secret","username":"oidc-user"}`)
	case r.URL.Path == "/v1/token":
		var body map[string]string
		_ = json.NewDecoder(r.Body).Decode(&body)
		if body["audience"] != "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/gh/providers/gh" ||
			body["subjectTokenType"] != jwtTokenType || body["grantType"] != tokenExchangeGrant {
			p.t.Errorf("gcp sts body %v", body)
		}
		if audOf(p.t, body["subjectToken"]) != "https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/gh/providers/gh" {
			p.t.Errorf("gcp: ID token audience %q", audOf(p.t, body["subjectToken"]))
		}
		if p.fail(w, `{"error":"invalid_grant","error_description":"The audience in ID Token does not match the expected audience."}`, "application/json") {
			return
		}
		_, _ = io.WriteString(w, `{"access_token":"gcp-federated","token_type":"Bearer","expires_in":3599}`)
	case strings.HasSuffix(r.URL.Path, ":generateAccessToken"):
		if r.Header.Get("Authorization") != "Bearer gcp-federated" || !strings.Contains(r.URL.Path, "puller@proj.iam.gserviceaccount.com") {
			p.t.Errorf("gcp iamcredentials: auth %q path %s", r.Header.Get("Authorization"), r.URL.Path)
		}
		_, _ = io.WriteString(w, `{"accessToken":"gcp-sa-token","expireTime":"2030-01-01T00:00:00Z"}`)
	case r.URL.Path == "/tenant-1/oauth2/v2.0/token":
		f := p.form(r, map[string]string{"grant_type": "client_credentials", "client_id": "11111111-2222-3333-4444-555555555555",
			"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
		if audOf(p.t, f.Get("client_assertion")) != "api://AzureADTokenExchange" {
			p.t.Errorf("azure: ID token audience %q", audOf(p.t, f.Get("client_assertion")))
		}
		if p.fail(w, `{"error":"invalid_client","error_description":"AADSTS70021: No matching federated identity record found for presented assertion."}`, "application/json") {
			return
		}
		_, _ = io.WriteString(w, `{"access_token":"aad-token","token_type":"Bearer"}`)
	case r.URL.Path == "/oauth2/exchange":
		p.form(r, map[string]string{"grant_type": "access_token", "access_token": "aad-token", "service": "acme.azurecr.io", "tenant": "tenant-1"})
		_, _ = io.WriteString(w, `{"refresh_token":"acr-refresh"}`)
	case r.URL.Path == "/oauth/token":
		f := p.form(r, map[string]string{"grant_type": tokenExchangeGrant, "connection_id": "conn-1", "subject_token_type": idTokenType})
		if audOf(p.t, f.Get("subject_token")) != "https://identity.docker.com" {
			p.t.Errorf("dockerhub: ID token audience %q", audOf(p.t, f.Get("subject_token")))
		}
		if p.fail(w, `{"error":"access_denied","error_description":"connection not found"}`, "application/json") {
			return
		}
		_, _ = io.WriteString(w, `{"access_token":"dh-token"}`)
	case r.URL.Path == "/aws" && r.Header.Get("X-Amz-Target") == "":
		f := p.form(r, map[string]string{"Action": "AssumeRoleWithWebIdentity", "RoleArn": "arn:aws:iam::123456789012:role/pull", "RoleSessionName": "ghcr-pull"})
		if audOf(p.t, f.Get("WebIdentityToken")) != "sts.amazonaws.com" {
			p.t.Errorf("aws: ID token audience %q", audOf(p.t, f.Get("WebIdentityToken")))
		}
		if r.Header.Get("Authorization") != "" {
			p.t.Errorf("aws sts: AssumeRoleWithWebIdentity must be unsigned")
		}
		if p.fail(w, `<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error><RequestId>x</RequestId></ErrorResponse>`, "text/xml") {
			return
		}
		w.Header().Set("Content-Type", "text/xml")
		_, _ = io.WriteString(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAFAKE</AccessKeyId><SecretAccessKey>aws-secret-key</SecretAccessKey><SessionToken>aws-session-token</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>`)
	case r.URL.Path == "/aws":
		if r.Header.Get("X-Amz-Target") != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken" ||
			!strings.Contains(r.Header.Get("Authorization"), "Credential=ASIAFAKE/") || r.Header.Get("X-Amz-Security-Token") != "aws-session-token" {
			p.t.Errorf("aws ecr: target %q auth %q", r.Header.Get("X-Amz-Target"), r.Header.Get("Authorization"))
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		fmt.Fprintf(w, `{"authorizationData":[{"authorizationToken":%q,"proxyEndpoint":"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"}]}`,
			base64.StdEncoding.EncodeToString([]byte("AWS:ecr-password")))
	default:
		p.t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		w.WriteHeader(http.StatusNotFound)
	}
}

func TestExchange(t *testing.T) {
	var stolen atomic.Int32
	thief := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stolen.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	defer thief.Close()
	p := &providers{t: t, elsewhere: thief.URL}
	srv := httptest.NewServer(p)
	defer srv.Close()
	env := map[string]string{
		EnvGCPSTS: srv.URL + "/v1/token", EnvGCPIAMCredentials: srv.URL, EnvAzureAuthority: srv.URL,
		EnvACRExchange: srv.URL + "/oauth2/exchange", EnvDockerHubTokenURL: srv.URL + "/oauth/token",
		"AWS_ENDPOINT_URL_STS": srv.URL + "/aws", "AWS_ENDPOINT_URL_ECR": srv.URL + "/aws",
	}
	configs := map[string]Config{
		TokenExchange: {Provider: TokenExchange, TokenExchangeURL: srv.URL + "/generic", Audience: "https://exchange.example/aud"},
		GCP: {Provider: GCP, GCPWorkloadIdentityProvider: "projects/123/locations/global/workloadIdentityPools/gh/providers/gh",
			GCPServiceAccount: "puller@proj.iam.gserviceaccount.com"},
		AzureACR:  {Provider: AzureACR, AzureClientID: "11111111-2222-3333-4444-555555555555", AzureTenantID: "tenant-1", Registry: "acme.azurecr.io"},
		DockerHub: {Provider: DockerHub, DockerHubConnectionID: "conn-1", Username: "acmeorg"},
		AWSECR:    {Provider: AWSECR, AWSRoleARN: "arn:aws:iam::123456789012:role/pull", Registry: "123456789012.dkr.ecr.eu-west-1.amazonaws.com"},
	}
	want := map[string][2]string{
		TokenExchange: {"oidc-user", "tx-secret"},
		GCP:           {"oauth2accesstoken", "gcp-sa-token"},
		AzureACR:      {"00000000-0000-0000-0000-000000000000", "acr-refresh"},
		DockerHub:     {"acmeorg", "dh-token"},
		AWSECR:        {"AWS", "ecr-password"},
	}
	intermediate := map[string][]string{
		GCP: {"gcp-federated"}, AzureACR: {"aad-token"}, AWSECR: {"aws-secret-key", "aws-session-token"},
	}
	for provider, cfg := range configs {
		cfg.Getenv = func(k string) string { return env[k] }
		for _, mode := range []string{"ok", "4xx", "5xx", "redirect"} {
			t.Run(provider+"/"+mode, func(t *testing.T) {
				p.t, p.mode = t, mode
				var masked []string
				var jwt string
				creds, err := Exchange(context.Background(), cfg, func(_ context.Context, aud string) (string, error) {
					jwt = fakeJWT(aud)
					return jwt, nil
				}, func(s string) { masked = append(masked, s) })
				if len(masked) == 0 || masked[0] != jwt {
					t.Errorf("the ID token was not masked first: %v", masked)
				}
				switch mode {
				case "ok":
					if err != nil {
						t.Fatalf("exchange: %v", err)
					}
					if creds.Username != want[provider][0] || creds.Password != want[provider][1] || creds.Mode != registryauth.ModeOIDC || creds.Provider != provider {
						t.Errorf("creds %s/%q", creds, creds.Password)
					}
					for _, s := range append(intermediate[provider], creds.Password) {
						if !contains(masked, s) {
							t.Errorf("secret %q never masked (masked: %v)", s, masked)
						}
					}
				case "4xx":
					var ee *ExchangeError
					if !errors.As(err, &ee) || ee.Fix == "" || ee.Message == "" {
						t.Fatalf("want an ExchangeError with the provider's words and a fix, got %v", err)
					}
				case "5xx":
					var te *failure.Transient
					if !errors.As(err, &te) {
						t.Fatalf("want a TransientError, got %v", err)
					}
				case "redirect":
					var re *RedirectError
					if !errors.As(err, &re) || !strings.Contains(err.Error(), srv.URL) || strings.Contains(err.Error(), "x=1") {
						t.Fatalf("want a RedirectError naming the endpoint (and no query), got %v", err)
					}
					if n := stolen.Load(); n != 0 {
						t.Fatalf("the redirect was followed %d times", n)
					}
				}
				if err != nil && strings.Contains(err.Error(), jwt[:20]) {
					t.Errorf("the error carries the ID token: %v", err)
				}
			})
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestValidate(t *testing.T) {
	tests := []struct {
		cfg   Config
		input string
	}{
		{Config{Provider: "vault"}, "Provider"},
		{Config{Provider: AWSECR, AWSRoleARN: "role/pull"}, "AWSRoleARN"},
		{Config{Provider: AWSECR, AWSRoleARN: "arn:aws:iam::123456789012:role/pull", Registry: "ghcr.io"}, "AWSRegion"},
		{Config{Provider: GCP, GCPWorkloadIdentityProvider: "my-pool"}, "GCPWorkloadIdentityProvider"},
		{Config{Provider: AzureACR, AzureClientID: "x"}, "AzureClientID"},
		{Config{Provider: AzureACR, AzureClientID: "11111111-2222-3333-4444-555555555555"}, "AzureTenantID"},
		{Config{Provider: DockerHub, Username: "u"}, "DockerHubConnectionID"},
		{Config{Provider: TokenExchange, TokenExchangeURL: "http://exchange.example"}, "TokenExchangeURL"},
		// Loopback is parsed, not matched by prefix: these are remote hosts.
		{Config{Provider: TokenExchange, TokenExchangeURL: "http://127.example.net/token"}, "TokenExchangeURL"},
		{Config{Provider: TokenExchange, TokenExchangeURL: "http://localhost.example.net/token"}, "TokenExchangeURL"},
		{Config{Provider: TokenExchange, TokenExchangeURL: "http://127.0.0.1:8080/token"}, ""},
		{Config{Provider: TokenExchange, TokenExchangeURL: "http://localhost:8080/token"}, ""},
		{Config{Provider: AWSECR, AWSRoleARN: "arn:aws:iam::123456789012:role/pull", Registry: "123456789012.dkr.ecr.us-east-2.amazonaws.com"}, ""},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		var bad *failure.BadInput
		if tt.input == "" {
			if err != nil {
				t.Errorf("%+v: %v", tt.cfg, err)
			}
			continue
		}
		if !errors.As(err, &bad) || bad.Input != tt.input {
			t.Errorf("%+v: error %v does not name %s", tt.cfg, err, tt.input)
		}
	}
}

// Guarantee: a provider's Retry-After on a 429 (or a 5xx) travels in the
// Transient error, in both RFC 9110 forms, so internal/retry waits as long
// as the provider asked and no less.
func TestProviderRetryAfter(t *testing.T) {
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	for _, tc := range []struct {
		status   int
		header   string
		min, max time.Duration
	}{
		{http.StatusTooManyRequests, "7", 7 * time.Second, 7 * time.Second},
		{http.StatusTooManyRequests, date, 80 * time.Second, 90 * time.Second},
		{http.StatusServiceUnavailable, "3", 3 * time.Second, 3 * time.Second},
		{http.StatusTooManyRequests, "", 0, 0},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tc.header != "" {
				w.Header().Set("Retry-After", tc.header)
			}
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, `{"error":"slow_down"}`)
		}))
		cfg := Config{Provider: TokenExchange, TokenExchangeURL: srv.URL + "/token", Audience: "aud"}
		_, err := Exchange(context.Background(), cfg, func(context.Context, string) (string, error) { return fakeJWT("aud"), nil }, func(string) {})
		srv.Close()
		var te *failure.Transient
		if !errors.As(err, &te) {
			t.Fatalf("%d Retry-After %q: err = %v, want Transient", tc.status, tc.header, err)
		}
		if te.RetryAfter < tc.min || te.RetryAfter > tc.max || te.RetryDelay() != te.RetryAfter {
			t.Errorf("%d Retry-After %q: RetryAfter = %v, want %v..%v", tc.status, tc.header, te.RetryAfter, tc.min, tc.max)
		}
	}
}

// Guarantee: AWS's throttling answer (429 with Retry-After) is waited for
// too: the SDK's own retries, which would have read it, are off.
func TestAWSRetryAfter(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/xml")
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>x</RequestId></ErrorResponse>`)
	}))
	defer srv.Close()
	env := map[string]string{"AWS_ENDPOINT_URL_STS": srv.URL, "AWS_ENDPOINT_URL_ECR": srv.URL}
	cfg := Config{Provider: AWSECR, AWSRoleARN: "arn:aws:iam::123456789012:role/pull", Registry: "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
		Getenv: func(k string) string { return env[k] }}
	_, err := Exchange(context.Background(), cfg, func(context.Context, string) (string, error) { return fakeJWT("sts.amazonaws.com"), nil }, func(string) {})
	var te *failure.Transient
	if !errors.As(err, &te) || te.Status != http.StatusTooManyRequests {
		t.Fatalf("err = %v, want a 429 Transient", err)
	}
	if te.RetryAfter != 5*time.Second {
		t.Errorf("RetryAfter = %v, want 5s", te.RetryAfter)
	}
}
