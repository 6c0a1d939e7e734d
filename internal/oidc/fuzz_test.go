package oidc

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// A provider's error body, whatever its shape, yields its words clipped to
// failure.MaxMessage bytes (plus the ellipsis); a body that is not JSON
// with error words is kept as sent, trimmed.
func FuzzProviderMessage(f *testing.F) {
	f.Add([]byte(`{"error":"invalid_grant","error_description":"AADSTS70021: No matching federated identity record found"}`))
	f.Add([]byte(`{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}`))
	f.Add([]byte("  <html>502 Bad Gateway</html>\r\n"))
	f.Add([]byte(`{"detail":"` + strings.Repeat("é", 400) + `"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		msg := providerMessage(body)
		if len(msg) > failure.MaxMessage+len("…") {
			t.Fatalf("unbounded message: %d bytes", len(msg))
		}
		plain := strings.TrimSpace(string(body))
		if strings.HasPrefix(plain, "{") {
			return // JSON words are checked by the table tests
		}
		if len(plain) <= failure.MaxMessage {
			if msg != plain {
				t.Fatalf("plain body %q became %q", body, msg)
			}
			return
		}
		// Clipped: a prefix of the body, cut at the limit or at most
		// utf8.UTFMax-1 bytes before it (never inside a rune).
		kept, ok := strings.CutSuffix(msg, "…")
		if !ok || !strings.HasPrefix(plain, kept) || len(kept) < failure.MaxMessage-(utf8.UTFMax-1) {
			t.Fatalf("plain body %q became %q", body, msg)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Whatever a provider answers, one exchange step ends in nil (2xx JSON), an
// *ExchangeError (other 2xx, 4xx) or a *failure.Transient (429, 5xx);
// the message is bounded; and the request body, which carries the ID
// token, never shows in the error unless the provider itself echoed it.
func FuzzProviderAnswer(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"x"}`), "")
	f.Add(400, []byte(`{"error":"invalid_request","error_description":"subject_token is malformed"}`), "")
	f.Add(429, []byte("slow down"), "3")
	f.Add(503, []byte(strings.Repeat("x", 2000)), "Wed, 21 Oct 2015 07:28:00 GMT")
	const idToken = "eyJhbGciOiJSUzI1NiJ9.Y2FuYXJ5LWlkLXRva2Vu.c2ln"
	f.Fuzz(func(t *testing.T, status int, body []byte, retryAfter string) {
		if status < 0 {
			status = -status
		}
		status = 100 + status%500 // what net/http's client can hand back
		c := Config{HTTPClient: &http.Client{
			Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				h := http.Header{}
				h.Set("Retry-After", retryAfter)
				return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(string(body))), Request: r}, nil
			}),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}}
		var out struct {
			AccessToken string `json:"access_token"`
		}
		err := c.do(context.Background(), call{provider: TokenExchange, step: "token exchange", fix: "check the endpoint",
			method: http.MethodPost, url: "https://exchange.example/token",
			form: url.Values{"subject_token": {idToken}}}, &out)
		var ee *ExchangeError
		var te *failure.Transient
		switch {
		case status == http.StatusTooManyRequests || status >= 500:
			if !errors.As(err, &te) {
				t.Fatalf("%d: %v is not transient", status, err)
			}
			if te.RetryAfter < 0 {
				t.Fatalf("negative wait %v", te.RetryAfter)
			}
		case status >= 200 && status < 300:
			if err != nil && !errors.As(err, &ee) {
				t.Fatalf("%d: %v is neither success nor an exchange error", status, err)
			}
		default:
			if !errors.As(err, &ee) {
				t.Fatalf("%d: %v is not an exchange error", status, err)
			}
		}
		if err == nil {
			return
		}
		if ee != nil && len(ee.Message) > failure.MaxMessage+len("…") {
			t.Fatalf("unbounded message: %d bytes", len(ee.Message))
		}
		if te != nil && len(te.Response.Message) > failure.MaxMessage+len("…") {
			t.Fatalf("unbounded message: %d bytes", len(te.Response.Message))
		}
		if strings.Contains(err.Error(), idToken) && !strings.Contains(string(body), idToken) {
			t.Fatalf("the ID token leaked into %v", err)
		}
	})
}
