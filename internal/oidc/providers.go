package oidc

import (
	"cmp"
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// exchangeGCP: Google STS token exchange, then optionally impersonating a
// service account. Artifact Registry takes the access token as the password
// of user oauth2accesstoken.
func exchangeGCP(ctx context.Context, c Config, jwt string, mask func(string)) (string, string, error) {
	tok, _, err := gcpAccessToken(ctx, c, jwt, mask)
	return "oauth2accesstoken", tok, err
}

// gcpAccessToken is the Google access token of the workload identity
// (impersonating GCPServiceAccount when set), masked, and its expiry.
func gcpAccessToken(ctx context.Context, c Config, jwt string, mask func(string)) (string, time.Time, error) {
	fix := "check the workload identity provider's attribute condition and that its allowed audience matches oidc-audience"
	start := time.Now()
	var sts struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	provider := cmp.Or(c.Provider, GCP)
	err := c.do(ctx, call{provider: provider, step: "sts.googleapis.com token exchange", fix: fix,
		method: http.MethodPost, url: c.endpoint(EnvGCPSTS, "https://sts.googleapis.com/v1/token"),
		json: map[string]string{
			"audience":           "//iam.googleapis.com/" + c.GCPWorkloadIdentityProvider,
			"grantType":          tokenExchangeGrant,
			"requestedTokenType": accessTokenType,
			"scope":              "https://www.googleapis.com/auth/cloud-platform",
			"subjectTokenType":   jwtTokenType,
			"subjectToken":       jwt,
		}}, &sts)
	if err == nil && sts.AccessToken == "" {
		err = missing(provider, "sts.googleapis.com token exchange", "access_token")
	}
	if err != nil {
		return "", time.Time{}, err
	}
	mask(sts.AccessToken)
	if c.GCPServiceAccount == "" {
		return sts.AccessToken, start.Add(lifeOr(time.Duration(sts.ExpiresIn)*time.Second, time.Hour)), nil
	}
	var sa struct {
		AccessToken string    `json:"accessToken"`
		ExpireTime  time.Time `json:"expireTime"`
	}
	base := strings.TrimRight(c.endpoint(EnvGCPIAMCredentials, "https://iamcredentials.googleapis.com"), "/")
	err = c.do(ctx, call{provider: provider, step: "iamcredentials generateAccessToken",
		fix:    "grant the workload identity principal roles/iam.workloadIdentityUser on " + c.GCPServiceAccount,
		method: http.MethodPost, url: base + "/v1/projects/-/serviceAccounts/" + url.PathEscape(c.GCPServiceAccount) + ":generateAccessToken",
		json: map[string]any{"scope": []string{"https://www.googleapis.com/auth/cloud-platform"}}, bearer: sts.AccessToken}, &sa)
	if err == nil && sa.AccessToken == "" {
		err = missing(provider, "iamcredentials generateAccessToken", "accessToken")
	}
	if err != nil {
		return "", time.Time{}, err
	}
	mask(sa.AccessToken)
	if sa.ExpireTime.IsZero() {
		sa.ExpireTime = start.Add(time.Hour)
	}
	return sa.AccessToken, sa.ExpireTime, nil
}

// lifeOr is d, or def when the answer gave none.
func lifeOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// exchangeAzure: Entra client credentials with the ID token as the client
// assertion, then ACR's /oauth2/exchange for a registry refresh token, the
// password of the all-zero user.
func exchangeAzure(ctx context.Context, c Config, jwt string, mask func(string)) (string, string, error) {
	aad, _, err := entraToken(ctx, c, jwt, "https://management.azure.com/.default", mask)
	if err != nil {
		return "", "", err
	}
	var acr struct {
		RefreshToken string `json:"refresh_token"`
	}
	err = c.do(ctx, call{provider: AzureACR, step: "ACR /oauth2/exchange",
		fix:    "give the app registration the AcrPull role on the registry",
		method: http.MethodPost, url: c.endpoint(EnvACRExchange, "https://"+c.Registry+"/oauth2/exchange"),
		form: url.Values{
			"grant_type":   {"access_token"},
			"service":      {c.Registry},
			"tenant":       {c.AzureTenantID},
			"access_token": {aad},
		}}, &acr)
	if err == nil && acr.RefreshToken == "" {
		err = missing(AzureACR, "ACR /oauth2/exchange", "refresh_token")
	}
	if err != nil {
		return "", "", err
	}
	return "00000000-0000-0000-0000-000000000000", acr.RefreshToken, nil
}

// entraToken is an Entra ID access token for scope, by client credentials
// with the ID token as the client assertion: masked, and its expiry.
func entraToken(ctx context.Context, c Config, jwt, scope string, mask func(string)) (string, time.Time, error) {
	start := time.Now()
	var aad struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	provider := cmp.Or(c.Provider, AzureACR)
	authority := strings.TrimRight(c.endpoint(EnvAzureAuthority, "https://login.microsoftonline.com"), "/")
	err := c.do(ctx, call{provider: provider, step: "Entra token request",
		fix:    "add a federated credential to the app registration whose issuer is https://token.actions.githubusercontent.com and whose subject matches this workflow (repo:<owner>/<repo>:...)",
		method: http.MethodPost, url: authority + "/" + url.PathEscape(c.AzureTenantID) + "/oauth2/v2.0/token",
		form: url.Values{
			"grant_type":            {"client_credentials"},
			"client_id":             {c.AzureClientID},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
			"client_assertion":      {jwt},
			"scope":                 {scope},
		}}, &aad)
	if err == nil && aad.AccessToken == "" {
		err = missing(provider, "Entra token request", "access_token")
	}
	if err != nil {
		return "", time.Time{}, err
	}
	mask(aad.AccessToken)
	return aad.AccessToken, start.Add(lifeOr(time.Duration(aad.ExpiresIn)*time.Second, time.Hour)), nil
}

// exchangeDockerHub: RFC 8693 at identity.docker.com with the OIDC
// connection; the access token is the org user's password.
func exchangeDockerHub(ctx context.Context, c Config, jwt string, mask func(string)) (string, string, error) {
	var out struct {
		AccessToken string `json:"access_token"`
	}
	err := c.do(ctx, call{provider: DockerHub, step: "identity.docker.com token exchange",
		fix:    "check the organization's OIDC connection: its id, and that its subject and audience rules match this workflow",
		method: http.MethodPost, url: c.endpoint(EnvDockerHubTokenURL, "https://identity.docker.com/oauth/token"),
		form: url.Values{
			"grant_type":           {tokenExchangeGrant},
			"subject_token":        {jwt},
			"subject_token_type":   {idTokenType},
			"requested_token_type": {accessTokenType},
			"connection_id":        {c.DockerHubConnectionID},
		}}, &out)
	if err == nil && out.AccessToken == "" {
		err = missing(DockerHub, "identity.docker.com token exchange", "access_token")
	}
	if err != nil {
		return "", "", err
	}
	return c.Username, out.AccessToken, nil
}

// exchangeGeneric: any RFC 8693 endpoint. It reads access_token and an
// optional username; without one, the username input, else
// oauth2accesstoken (what token-based registries commonly ignore).
func exchangeGeneric(ctx context.Context, c Config, jwt string, mask func(string)) (string, string, error) {
	var out struct {
		AccessToken string `json:"access_token"`
		Username    string `json:"username"`
	}
	err := c.do(ctx, call{provider: TokenExchange, step: "token exchange",
		fix:    "check the endpoint's trust rules for this workflow's ID token (issuer, audience, subject)",
		method: http.MethodPost, url: c.TokenExchangeURL,
		form: url.Values{
			"grant_type":           {tokenExchangeGrant},
			"subject_token":        {jwt},
			"subject_token_type":   {idTokenType},
			"requested_token_type": {accessTokenType},
			"audience":             {c.audience()},
		}}, &out)
	if err == nil && out.AccessToken == "" {
		err = missing(TokenExchange, "token exchange", "access_token")
	}
	if err != nil {
		return "", "", err
	}
	user := out.Username
	if user == "" {
		user = c.Username
	}
	if user == "" {
		user = "oauth2accesstoken"
	}
	return user, out.AccessToken, nil
}

func missing(provider, step, field string) error {
	return &ExchangeError{Provider: provider, Step: step, Message: "the answer has no " + field}
}
