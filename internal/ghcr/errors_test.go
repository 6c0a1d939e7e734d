package ghcr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func tErr(status int, path string, diags ...transport.Diagnostic) error {
	u, _ := url.Parse("https://ghcr.io" + path)
	return fmt.Errorf("HEAD: %w", &transport.Error{StatusCode: status, Errors: diags, Request: &http.Request{URL: u}})
}

func diag(code, msg string) transport.Diagnostic {
	return transport.Diagnostic{Code: transport.ErrorCode(code), Message: msg}
}

func TestClassifyRegistryAnswers(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		anonymous bool
		want      string
		wantWhere string
	}{
		{"GHCR 403 DENIED at token endpoint for rejected PAT", tErr(403, "/token", diag("DENIED", "requested access to the resource is denied")), false, "rejected", "token endpoint"},
		{"GHCR 403 anonymous on private package", tErr(403, "/token", diag("DENIED", "requested access to the resource is denied")), true, "anonymous-denied", "token endpoint"},
		{"401 at token endpoint", tErr(401, "/token", diag("UNAUTHORIZED", "authentication required")), false, "rejected", "token endpoint"},
		{"expired PAT", tErr(401, "/token", diag("UNAUTHORIZED", "personal access token is expired")), false, "rejected", "token endpoint"},
		{"distribution 401 on manifest (token lacks scope)", tErr(401, "/v2/acme/app/manifests/1"), true, "anonymous-denied", "registry"},
		{"permission_denied read_package", tErr(403, "/token", diag("DENIED", "permission_denied: read_package")), false, "rejected", "token endpoint"},
		{"installation not allowed", tErr(403, "/token", diag("DENIED", "installation not allowed to Read organization package")), false, "rejected", "token endpoint"},
		{"manifest unknown", tErr(404, "/v2/acme/app/manifests/nope", diag("MANIFEST_UNKNOWN", "manifest unknown")), false, "not-found", "registry"},
		{"name unknown", tErr(404, "/v2/acme/nope/manifests/1", diag("NAME_UNKNOWN", "repository name not known to registry")), false, "not-found", "registry"},
		{"HEAD 404 has no body", tErr(404, "/v2/acme/app/manifests/1"), false, "not-found", "registry"},
		{"toomanyrequests", tErr(429, "/v2/acme/app/manifests/1", diag("TOOMANYREQUESTS", "retry later")), false, "transient", "registry"},
		{"503", tErr(503, "/v2/acme/app/manifests/1"), false, "transient", "registry"},
		{"500 at token endpoint", tErr(500, "/token"), false, "transient", "token endpoint"},
		{"502", tErr(502, "/v2/"), false, "transient", "registry"},
		{"400 NAME_INVALID", tErr(400, "/v2/x/manifests/1", diag("NAME_INVALID", "invalid repository name")), false, "bad-input:image", ""},
		{"timeout", context.DeadlineExceeded, false, "transient", ""},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, false, "transient", ""},
		{"refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, false, "transient", ""},
		{"unexpected EOF", fmt.Errorf("reading: %w", io.ErrUnexpectedEOF), false, "transient", ""},
		{"unknown host", &net.DNSError{Name: "ghcr.invalid", IsNotFound: true}, false, "bad-input:image", ""},
		{"something else", errors.New("x509: certificate signed by unknown authority"), false, "other", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.err, tt.anonymous)
			if c := failure.ClassOf(got); c != tt.want {
				t.Fatalf("class = %s, want %s (%v)", c, tt.want, got)
			}
			if tt.wantWhere != "" {
				var rej *failure.Rejected
				var nf *failure.NotFound
				var tr *failure.Transient
				where := ""
				switch {
				case errors.As(got, &rej):
					where = rej.Where
				case errors.As(got, &nf):
					where = nf.Where
				case errors.As(got, &tr):
					where = tr.Where
				}
				if where != tt.wantWhere {
					t.Errorf("where = %q, want %q", where, tt.wantWhere)
				}
			}
			if Classify(got, tt.anonymous) != got {
				t.Errorf("classifying twice changed the error")
			}
		})
	}
}

func TestRejectedErrorKeepsRegistryWords(t *testing.T) {
	err := Classify(tErr(403, "/token", diag("DENIED", "requested access to the resource is denied")), false)
	want := "credentials rejected: 403 Forbidden from the token endpoint: DENIED: requested access to the resource is denied"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err.Error(), want)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"1", time.Second},
		{"120", 2 * time.Minute},
		{"-5", 0},
		{"soon", 0},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-30 * time.Second).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := ParseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestDiagnoseGHCR(t *testing.T) {
	rej := Classify(tErr(403, "/token", diag("DENIED", "requested access to the resource is denied")), false)
	anon := Classify(tErr(401, "/v2/acme/app/manifests/1"), true)
	got := Diagnose("ghcr.io", []Attempt{{Mode: AuthToken, Err: rej}, {Mode: AuthAnonymous, Err: anon}})
	for _, want := range []string{"with credentials: credentials rejected", "anonymously: anonymous access denied",
		"packages: read", "Manage Actions access", "read:packages", "private by default"} {
		if !strings.Contains(got, want) {
			t.Errorf("diagnosis lacks %q:\n%s", want, got)
		}
	}
	other := Diagnose("registry.example.com", []Attempt{{Mode: AuthToken, Err: rej}})
	if strings.Contains(other, "Manage Actions access") {
		t.Errorf("GHCR advice given for another registry:\n%s", other)
	}
}

func TestCredentialsNeverPrintSecret(t *testing.T) {
	c := Credentials{Mode: AuthToken, Username: "u", Password: "s3cr3t-canary"}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, "s3cr3t-canary") {
			t.Errorf("secret printed: %s", s)
		}
	}
}

func TestDiagnoseTellsWhatHappened(t *testing.T) {
	wrongPassword := Classify(tErr(401, "/token", diag("UNAUTHORIZED", "authentication required")), false)
	noAccess := Classify(tErr(403, "/token", diag("DENIED", "requested access to the resource is denied")), false)
	daemonNoAccess := failure.FromDaemon(500, `Get "https://r.example/token": failed to fetch oauth token: unexpected status: 403 Forbidden`, false)
	daemonAnonDenied := failure.FromDaemon(404, "pull access denied for r.example/acme/app, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", true)
	tests := []struct {
		name     string
		registry string
		attempts []Attempt
		want     []string
		not      []string
	}{
		{"401: the credentials are wrong", "r.example", []Attempt{{Mode: AuthToken, Err: wrongPassword}},
			[]string{"check the username and password"}, []string{"signed in, but no access"}},
		{"403: signed in, no access", "r.example", []Attempt{{Mode: AuthToken, Err: noAccess}},
			[]string{"signed in, but no access to this repository"}, []string{"check the username and password"}},
		{"403 relayed by a daemon", "r.example", []Attempt{{Mode: AuthToken, Target: "h:22", Err: daemonNoAccess}},
			[]string{"signed in, but no access"}, nil},
		{"GHCR 403 is both: its own fixes", "ghcr.io", []Attempt{{Mode: AuthToken, Err: noAccess}},
			[]string{"packages: read"}, []string{"signed in, but no access"}},
		{"probe let in, daemon refused: a disagreement", "r.example",
			[]Attempt{{Mode: AuthAnonymous}, {Mode: AuthAnonymous, Target: "10.0.0.5:22", Err: daemonAnonDenied}},
			[]string{"the runner's probe could read the repository anonymously, but the daemon on 10.0.0.5:22 was refused anonymously"},
			[]string{"private or does not exist"}},
		{"refused credentials recovered from, then unsigned: the signature's advice alone", "r.example",
			[]Attempt{{Mode: AuthToken, Err: noAccess}, {Mode: AuthAnonymous}, {Mode: AuthAnonymous, Err: signatureErr(failure.Unsigned)}},
			[]string{"with credentials: credentials rejected", "no signature the verify policy accepts"}, []string{"signed in, but no access", "read access"}},
		{"invalid signature with working credentials", "r.example",
			[]Attempt{{Mode: AuthToken}, {Mode: AuthToken, Err: signatureErr(failure.InvalidSignature)}},
			[]string{"What to do", "verify-key is the public half"}, nil},
		{"another signer", "ghcr.io",
			[]Attempt{{Mode: AuthToken}, {Mode: AuthToken, Err: signatureErr(failure.SignerMismatch)}},
			[]string{"not by the signer the policy names"}, []string{"packages: read"}},
		{"both refused: private", "r.example",
			[]Attempt{{Mode: AuthAnonymous, Err: Classify(tErr(401, "/v2/acme/app/manifests/1"), true)}, {Mode: AuthAnonymous, Target: "h:22", Err: daemonAnonDenied}},
			[]string{"private or does not exist"}, []string{"runner's probe could read"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Diagnose(tt.registry, tt.attempts)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("diagnosis lacks %q:\n%s", w, got)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(got, n) {
					t.Errorf("diagnosis says %q:\n%s", n, got)
				}
			}
		})
	}
}

// signatureErr stands for internal/verify's errors, which name their class.
type signatureErr string

func (e signatureErr) Error() string { return "signature verification failed: " + string(e) }
func (e signatureErr) Class() string { return string(e) }
