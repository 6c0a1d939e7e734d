package kube

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/transport"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Token is a bearer token for the API server and the time it stops being
// accepted.
type Token struct {
	Value  string
	Expiry time.Time
}

// TokenSource mints a fresh token. Prepull asks for one before the first
// request, again shortly before each expires, and once more when the API
// server answers 401. It must mask the token before returning it.
type TokenSource func(ctx context.Context) (Token, error)

// Keyless says how a cluster without a kubeconfig is reached: its endpoint
// and CA, a token source, and the words of a refusal.
type Keyless struct {
	// Server is the API server's URL; CA its certificate authority, PEM
	// (nil: the system's roots).
	Server string
	CA     []byte
	Tokens TokenSource
	// Input is the input a refused token points at (kube-auth), Who the
	// identity in words (role arn:aws:..., the workflow's ID token), and
	// Refused the fix for a 401 (an access entry for the role, ...).
	Input, Who, Refused string
	// Unreachable is the fix for an endpoint the runner cannot reach (a
	// private one), named beside the network error.
	Unreachable string
}

// Settings is a cluster destination before its cluster is known: the
// namespace, node selector and timeout, validated. A keyless form learns
// its cluster at run time (WithKeyless).
func Settings(namespace, nodeSelector string, timeout time.Duration) (Config, error) {
	return Config{}.settle(namespace, nodeSelector, timeout)
}

// WithKeyless is c reached with a refreshing token instead of a
// kubeconfig (kube-auth eks, oidc, ...): never a static bearer token, the
// token source is asked per request through a wrapped transport.
func (c Config) WithKeyless(k Keyless) (Config, error) {
	server, err := url.Parse(k.Server)
	if err != nil || server.Scheme != "https" || server.Host == "" {
		return Config{}, failure.Bad("kube-server", fmt.Sprintf("%q is not an https URL of an API server", k.Server), "e.g. https://ABC123.gr7.eu-west-1.eks.amazonaws.com")
	}
	if len(k.CA) > 0 {
		if b, _ := pem.Decode(k.CA); b == nil || b.Type != "CERTIFICATE" {
			return Config{}, failure.Bad("kube-ca", "is not a PEM certificate (nor base64 of one)", "give the cluster's CA as PEM, or its certificate-authority-data")
		}
	}
	if k.Tokens == nil {
		return Config{}, errors.New("kube: a keyless cluster needs a token source")
	}
	tokens := &tokenCache{src: k.Tokens}
	tc := &transport.Config{UserAgent: "ghcr-pull", TLS: transport.TLSConfig{CAData: k.CA}}
	tc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &tokenTransport{base: rt, tokens: tokens} })
	c.transport, c.tokens, c.secrets, c.Server = tc, tokens, nil, strings.TrimSuffix(server.String(), "/")
	c.refusal = refusal{input: k.Input, who: k.Who, fix: k.Refused, unreachable: k.Unreachable}
	return c, nil
}

// ParseCA reads a CA given as PEM or as base64 of PEM (what EKS and
// kubeconfigs hold).
func ParseCA(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if strings.HasPrefix(s, "-----BEGIN") {
		return []byte(s + "\n"), nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, failure.Bad("kube-ca", "is neither PEM nor base64", "give the cluster's CA as PEM, or its certificate-authority-data")
	}
	return b, nil
}

// refreshShare is the part of a token's life left when it is replaced:
// a quarter, at most a minute (an EKS token is replaced a minute early,
// one of two seconds half a second early).
const refreshShare = 4

// tokenCache holds the current token; one mint at a time.
type tokenCache struct {
	src TokenSource

	mu      sync.Mutex
	cur     Token
	renewAt time.Time
	seen    []string // every token handed out, for redaction
	mints   int
}

// get is the cached token, or a fresh one when it is due (or when stale
// is the token the server just refused).
func (c *tokenCache) get(ctx context.Context, stale string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur.Value != "" && c.cur.Value != stale && time.Now().Before(c.renewAt) {
		return c.cur.Value, nil
	}
	if stale != "" && c.cur.Value != stale {
		return c.cur.Value, nil // another request renewed it meanwhile
	}
	t, err := c.src(ctx)
	if err != nil {
		return "", err
	}
	if t.Value == "" {
		return "", errors.New("the token source returned an empty token")
	}
	now := time.Now()
	c.cur, c.seen, c.mints = t, append(c.seen, t.Value), c.mints+1
	c.renewAt = t.Expiry.Add(-min(time.Minute, t.Expiry.Sub(now)/refreshShare))
	return t.Value, nil
}

func (c *tokenCache) secrets() []string {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.seen...)
}

// Prime mints the first token of a keyless cluster now, so a source that
// cannot (no id-token permission, a role it may not assume) fails the step
// before anything else is done; a kubeconfig's cluster has nothing to do.
func (c Config) Prime(ctx context.Context) error {
	if c.tokens == nil {
		return nil
	}
	_, err := c.tokens.get(ctx, "")
	return err
}

// Mints is how many tokens the source was asked for (for tests).
func (c Config) Mints() int {
	if c.tokens == nil {
		return 0
	}
	c.tokens.mu.Lock()
	defer c.tokens.mu.Unlock()
	return c.tokens.mints
}

// TokenError: the token source failed; the request was not sent.
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return "minting a cluster token: " + e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

// tokenTransport sets the bearer token on each request; a 401 is answered
// by one retry with a freshly minted token (the server may have stopped
// accepting the cached one early: a clock ahead of ours, a rotated key).
type tokenTransport struct {
	base   http.RoundTripper
	tokens *tokenCache
}

func (t *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.tokens.get(req.Context(), "")
	if err != nil {
		return nil, &TokenError{Err: err}
	}
	resp, err := t.base.RoundTrip(withBearer(req, tok))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if req.Body != nil && req.GetBody == nil {
		return resp, nil // the body is gone; the 401 stands
	}
	fresh, ferr := t.tokens.get(req.Context(), tok)
	if ferr != nil || fresh == tok {
		return resp, nil
	}
	retry := req.Clone(req.Context())
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	resp.Body.Close()
	return t.base.RoundTrip(withBearer(retry, fresh))
}

// unreachable: the request never got an answer from the server (no route,
// refused, timed out, no such host), as against one it answered.
func unreachable(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	return errors.As(err, &op) || errors.As(err, &dns)
}

func withBearer(req *http.Request, tok string) *http.Request {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}
