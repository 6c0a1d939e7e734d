package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// issuer is a token source whose tokens the fake API server accepts until
// they expire, and not after: as an API server checks an EKS token's
// X-Amz-Expires or a JWT's exp.
type issuer struct {
	life time.Duration

	mu      sync.Mutex
	expiry  map[string]time.Time
	n       int
	masked  []string
	refused int    // requests answered 401
	revoke  string // "METHOD path" at which the current token is revoked, once
	last    string
}

func (s *issuer) source(ctx context.Context) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	t := Token{Value: fmt.Sprintf("minted-%d-canary", s.n), Expiry: time.Now().Add(s.life)}
	s.masked = append(s.masked, t.Value) // masked before it is returned
	if s.expiry == nil {
		s.expiry = map[string]time.Time{}
	}
	s.expiry[t.Value], s.last = t.Expiry, t.Value
	return t, nil
}

func (s *issuer) accept(tok, req string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revoke != "" && strings.HasPrefix(req, s.revoke) && tok == s.last {
		s.revoke = ""
		delete(s.expiry, tok)
	}
	exp, ok := s.expiry[tok]
	if !ok || !time.Now().Before(exp) {
		s.refused++
		return false
	}
	return true
}

func keylessConfig(t *testing.T, f *fakeAPI, src TokenSource, timeout time.Duration) Config {
	t.Helper()
	cfg, err := Settings(f.ns, "", timeout)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = cfg.WithKeyless(Keyless{Server: strings.Replace(f.srv.URL, "http:", "https:", 1), Tokens: src,
		Input: "kube-auth", Who: "role arn:aws:iam::123456789012:role/deploy", Refused: "add an access entry for the role"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Server = f.srv.URL // the fake is plain HTTP
	return cfg
}

// A token of two seconds' life over a wait of five: the token is replaced
// before it expires, again and again, and the API server never sees an
// expired one.
func TestKeylessTokenRefreshesDuringTheWait(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"))
	s := &issuer{life: 2 * time.Second}
	f.accept = s.accept
	f.endWatch = 1 << 20 // every watch ends at once: the wait keeps asking
	cfg := keylessConfig(t, f, s.source, 5*time.Second)
	f.status = func(string) obj {
		return obj{"name": "pull", "state": obj{"waiting": obj{"reason": "ContainerCreating"}}}
	}
	res, err := Prepull(context.Background(), cfg, "reg.example/acme/app:1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ne *NodeError
	if len(res.Nodes) != 1 || !errors.As(res.Nodes[0].Err, &ne) || ne.Kind != TimedOut {
		t.Errorf("nodes %+v, want a time-out after the wait", res.Nodes)
	}
	if s.refused != 0 {
		t.Errorf("the API server refused %d requests: a token was used past its expiry", s.refused)
	}
	// 5 s of wait with 2 s tokens replaced half a second early: at least
	// 3 mints, and not one per request.
	if m := cfg.Mints(); m < 3 || m >= res.APICalls {
		t.Errorf("%d tokens minted for %d API calls, want at least 3 and fewer than the calls", m, res.APICalls)
	}
	if left := f.left(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// A token the server stops accepting early (revoked, a clock ahead) is
// replaced once on the 401, and the request sent again with its body.
func TestKeylessTokenRefreshesOnceOn401(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"))
	s := &issuer{life: time.Hour, revoke: "POST /apis/apps/v1/"}
	f.accept = s.accept
	cfg := keylessConfig(t, f, s.source, time.Minute)
	res, err := Prepull(context.Background(), cfg, "reg.example/acme/app:1", nil, nil)
	if err != nil || len(res.Nodes) != 1 || res.Nodes[0].Err != nil {
		t.Fatalf("err %v, nodes %+v", err, res.Nodes)
	}
	if s.refused != 1 || cfg.Mints() != 2 {
		t.Errorf("%d refused, %d minted; want the revoked token refused once and one new token", s.refused, cfg.Mints())
	}
	if ds := f.posted["daemonsets"]; ds == nil || ds["kind"] != "DaemonSet" {
		t.Errorf("the DaemonSet sent again after the 401 is %v", ds)
	}
}

// A cluster that refuses every token: a bad input naming kube-auth, the
// identity and the fix, one retry only, and no token in the words.
func TestKeylessTokenRefused(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"))
	s := &issuer{life: time.Hour}
	f.accept = func(string, string) bool { s.mu.Lock(); s.refused++; s.mu.Unlock(); return false }
	f.echo = false
	cfg := keylessConfig(t, f, s.source, time.Minute)
	_, err := Prepull(context.Background(), cfg, "reg.example/acme/app:1", nil, nil)
	var bi *failure.BadInput
	if !errors.As(err, &bi) || bi.Input != "kube-auth" || !strings.Contains(err.Error(), "role arn:aws:iam::123456789012:role/deploy") || bi.Fix != "add an access entry for the role" {
		t.Fatalf("err = %v, want kube-auth naming the role and the fix", err)
	}
	if s.refused != 2 || cfg.Mints() != 2 {
		t.Errorf("%d requests refused, %d tokens minted: want one retry with a fresh token", s.refused, cfg.Mints())
	}
	for _, tok := range s.masked {
		if strings.Contains(err.Error(), tok) {
			t.Errorf("the error holds a token: %v", err)
		}
	}
}

// Echoed tokens are redacted like a kubeconfig's.
func TestKeylessTokenRedacted(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"))
	s := &issuer{life: time.Hour}
	f.echo = true
	cfg := keylessConfig(t, f, s.source, time.Minute)
	_, err := Prepull(context.Background(), cfg, "reg.example/acme/app:1", nil, nil)
	if err == nil || strings.Contains(err.Error(), "minted-1-canary") || !strings.Contains(err.Error(), failure.Redacted) {
		t.Errorf("err = %v", err)
	}
}

// The source's own failure (no id-token permission) comes back as itself,
// and nothing is sent.
func TestKeylessTokenSourceFails(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"))
	want := &failure.BadInput{Input: "permissions", Problem: "no ID token", Fix: "add `permissions: id-token: write` to the job"}
	cfg := keylessConfig(t, f, func(context.Context) (Token, error) { return Token{}, want }, time.Minute)
	_, err := Prepull(context.Background(), cfg, "reg.example/acme/app:1", nil, nil)
	var bi *failure.BadInput
	if !errors.As(err, &bi) || bi != want || len(f.requested()) != 0 {
		t.Errorf("err = %v, requests %v", err, f.requested())
	}
}

// An endpoint that does not answer is named with the keyless form's fix.
func TestKeylessUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := &issuer{life: time.Hour}
	cfg, err := Settings("default", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = cfg.WithKeyless(Keyless{Server: "https://" + addr, Tokens: s.source, Input: "kube-auth", Unreachable: "the endpoint may be private"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Prepull(context.Background(), cfg, "reg.example/acme/app:1", nil, nil)
	var tr *failure.Transient
	if !errors.As(err, &tr) || !strings.Contains(err.Error(), "the endpoint may be private") {
		t.Errorf("err = %v", err)
	}
}

func TestKeylessConfigInputs(t *testing.T) {
	src := (&issuer{life: time.Hour}).source
	for _, c := range []struct {
		k     Keyless
		input string
	}{
		{Keyless{Server: "http://api.example", Tokens: src}, "kube-server"},
		{Keyless{Server: "api.example:443", Tokens: src}, "kube-server"},
		{Keyless{Server: "https://api.example", CA: []byte("not pem"), Tokens: src}, "kube-ca"},
	} {
		_, err := Config{}.WithKeyless(c.k)
		var bi *failure.BadInput
		if !errors.As(err, &bi) || bi.Input != c.input {
			t.Errorf("%+v: err = %v, want %s named", c.k, err, c.input)
		}
	}
	if _, err := ParseCA("%%%"); err == nil {
		t.Errorf("ParseCA took garbage")
	}
}
