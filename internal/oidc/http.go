package oidc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
)

// Endpoint overrides, for tests and sovereign clouds. AWS reads the SDK's
// own AWS_ENDPOINT_URL_STS and AWS_ENDPOINT_URL_ECR.
const (
	EnvGCPSTS            = "GHCR_PULL_GCP_STS_URL"            // default https://sts.googleapis.com/v1/token
	EnvGCPIAMCredentials = "GHCR_PULL_GCP_IAMCREDENTIALS_URL" // default https://iamcredentials.googleapis.com
	EnvAzureAuthority    = "GHCR_PULL_AZURE_AUTHORITY_URL"    // default https://login.microsoftonline.com
	EnvACRExchange       = "GHCR_PULL_ACR_EXCHANGE_URL"       // default https://<registry>/oauth2/exchange
	EnvDockerHubTokenURL = "GHCR_PULL_DOCKERHUB_TOKEN_URL"    // default https://identity.docker.com/oauth/token
	tokenExchangeGrant   = "urn:ietf:params:oauth:grant-type:token-exchange"
	idTokenType          = "urn:ietf:params:oauth:token-type:id_token"
	jwtTokenType         = "urn:ietf:params:oauth:token-type:jwt"
	accessTokenType      = "urn:ietf:params:oauth:token-type:access_token"
	maxProviderAnswer    = 1 << 20
)

func (c Config) endpoint(env, def string) string {
	if c.Getenv != nil {
		if v := strings.TrimSpace(c.Getenv(env)); v != "" {
			return v
		}
	}
	return def
}

// call is one HTTP exchange step.
type call struct {
	provider, step, fix string
	method, url         string
	form                url.Values
	json                any
	bearer              string
	// sign, when set, signs the request last (SigV4).
	sign func(*http.Request) error
}

// do sends the request and decodes a 2xx JSON answer into out. Errors are
// classified: 4xx → *ExchangeError with the provider's message and fix,
// 5xx/429/network → *failure.Transient. Request bodies (they carry
// tokens) are never part of an error.
func (c Config) do(ctx context.Context, k call, out any) error {
	var body io.Reader
	contentType := ""
	switch {
	case k.form != nil:
		body, contentType = strings.NewReader(k.form.Encode()), "application/x-www-form-urlencoded"
	case k.json != nil:
		b, err := json.Marshal(k.json)
		if err != nil {
			return err
		}
		body, contentType = bytes.NewReader(b), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, k.method, k.url, body)
	if err != nil {
		return failure.Bad("oidc-provider", fmt.Sprintf("%s endpoint %q: %v", k.provider, k.url, err), "")
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if k.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+k.bearer)
	}
	if k.sign != nil {
		if err := k.sign(req); err != nil {
			return err
		}
	}
	resp, err := c.client().Do(req)
	if err != nil {
		var redirect *RedirectError
		if errors.As(err, &redirect) {
			return redirect
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &failure.Transient{Response: failure.Response{Where: k.provider + " " + k.step}, Err: scrubURLError(err)}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxProviderAnswer))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			return &ExchangeError{Provider: k.provider, Step: k.step, Status: resp.StatusCode, Message: "answer is not JSON", Fix: k.fix}
		}
		return nil
	}
	msg := providerMessage(data)
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		return &failure.Transient{
			Response:   failure.Response{Status: resp.StatusCode, Message: msg, Where: k.provider + " " + k.step},
			RetryAfter: ghcr.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		}
	}
	return &ExchangeError{Provider: k.provider, Step: k.step, Status: resp.StatusCode, Message: msg, Fix: k.fix}
}

// scrubURLError drops the URL from a transport error: a query could carry
// a token.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// providerMessage extracts the provider's own error words from an OAuth,
// Google, Azure or plain answer, clipped.
func providerMessage(data []byte) string {
	var m struct {
		Error            any    `json:"error"`
		ErrorDescription string `json:"error_description"`
		Message          string `json:"message"`
		Detail           string `json:"detail"`
	}
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &m) == nil {
		parts := []string{}
		switch e := m.Error.(type) {
		case string:
			parts = append(parts, e)
		case map[string]any:
			if s, ok := e["message"].(string); ok {
				parts = append(parts, s)
			}
		}
		for _, s := range []string{m.ErrorDescription, m.Message, m.Detail} {
			if s != "" {
				parts = append(parts, s)
			}
		}
		if len(parts) > 0 {
			msg = strings.Join(parts, ": ")
		}
	}
	return failure.Clip(msg)
}
