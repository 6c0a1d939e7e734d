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

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func className(err error) string {
	var (
		rej *RejectedError
		nf  *NotFoundError
		tr  *TransientError
		bad *BadInputError
	)
	switch {
	case errors.As(err, &rej) && rej.Anonymous:
		return "anonymous-denied"
	case errors.As(err, &rej):
		return "rejected"
	case errors.As(err, &nf):
		return "notfound"
	case errors.As(err, &tr):
		return "transient"
	case errors.As(err, &bad):
		return "badinput:" + bad.Input
	}
	return "unclassified"
}

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
		{"manifest unknown", tErr(404, "/v2/acme/app/manifests/nope", diag("MANIFEST_UNKNOWN", "manifest unknown")), false, "notfound", "registry"},
		{"name unknown", tErr(404, "/v2/acme/nope/manifests/1", diag("NAME_UNKNOWN", "repository name not known to registry")), false, "notfound", "registry"},
		{"HEAD 404 has no body", tErr(404, "/v2/acme/app/manifests/1"), false, "notfound", "registry"},
		{"toomanyrequests", tErr(429, "/v2/acme/app/manifests/1", diag("TOOMANYREQUESTS", "retry later")), false, "transient", "registry"},
		{"503", tErr(503, "/v2/acme/app/manifests/1"), false, "transient", "registry"},
		{"500 at token endpoint", tErr(500, "/token"), false, "transient", "token endpoint"},
		{"502", tErr(502, "/v2/"), false, "transient", "registry"},
		{"400 NAME_INVALID", tErr(400, "/v2/x/manifests/1", diag("NAME_INVALID", "invalid repository name")), false, "badinput:image", ""},
		{"timeout", context.DeadlineExceeded, false, "transient", ""},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, false, "transient", ""},
		{"refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, false, "transient", ""},
		{"unexpected EOF", fmt.Errorf("reading: %w", io.ErrUnexpectedEOF), false, "transient", ""},
		{"unknown host", &net.DNSError{Name: "ghcr.invalid", IsNotFound: true}, false, "badinput:image", ""},
		{"something else", errors.New("x509: certificate signed by unknown authority"), false, "unclassified", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.err, tt.anonymous)
			if c := className(got); c != tt.want {
				t.Fatalf("class = %s, want %s (%v)", c, tt.want, got)
			}
			if tt.wantWhere != "" {
				var rej *RejectedError
				var nf *NotFoundError
				var tr *TransientError
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

func TestClassifyDaemonMessages(t *testing.T) {
	tests := []struct {
		status int
		msg    string
		anon   bool
		want   string
	}{
		// Real strings from REFERENCE §2/§3 and dockerd 20.10.
		{500, `Head "https://ghcr.io/v2/acme/app/manifests/1.2.3": denied: denied`, false, "rejected"},
		{500, `Get "https://ghcr.io/token?scope=repository%3Aacme%2Fapp%3Apull&service=ghcr.io": failed to fetch oauth token: unexpected status: 403 Forbidden`, false, "rejected"},
		{500, "unauthorized: authentication required", false, "rejected"},
		{500, "unauthorized: personal access token is expired", false, "rejected"},
		{500, "denied: permission_denied: read_package", false, "rejected"},
		{500, "denied: installation not allowed to Read organization package", false, "rejected"},
		{404, "pull access denied for 127.0.0.1:5000/acme/private, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", true, "anonymous-denied"},
		{0, "unauthorized: the token server's message", false, "rejected"},
		{404, "manifest for 127.0.0.1:5000/acme/app:nope not found: manifest unknown: manifest unknown", false, "notfound"},
		{0, "no matching manifest for linux/arm64/v8 in the manifest list entries", false, "badinput:platform"},
		{500, "toomanyrequests: You have reached your pull rate limit", false, "transient"},
		{500, `Get "https://127.0.0.1:5000/v2/": received unexpected HTTP status: 503 Service Unavailable`, false, "transient"},
		{500, "net/http: TLS handshake timeout", false, "transient"},
		{0, "read tcp 10.0.0.1:5000: read: connection reset by peer", false, "transient"},
		{0, "unexpected EOF", false, "transient"},
		{401, "", false, "rejected"},
		{503, "", false, "transient"},
		// containerd 1.6's CRI PullImage, its gRPC code as a status (0 for Unknown).
		{0, `failed to pull and unpack image "10.231.1.1:41293/acme/app:1": failed to resolve reference "10.231.1.1:41293/acme/app:1": failed to authorize: failed to fetch oauth token: unexpected status: 403 Forbidden`, false, "rejected"},
		{0, `failed to pull and unpack image "10.231.1.1:41293/acme/private:1": failed to resolve reference "10.231.1.1:41293/acme/private:1": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed`, true, "anonymous-denied"},
		{404, `failed to pull and unpack image "10.231.1.1:41293/acme/app:nope": failed to resolve reference "10.231.1.1:41293/acme/app:nope": 10.231.1.1:41293/acme/app:nope: not found`, false, "notfound"},
		{404, `failed to pull and unpack image "10.231.1.1:46801/acme/app:arm": no match for platform in manifest: not found`, false, "badinput:platform"},
		{0, `failed to pull and unpack image "10.231.1.1:41293/acme/app:1": failed to resolve reference "10.231.1.1:41293/acme/app:1": pulling from host 10.231.1.1:41293 failed with status code [manifests 1]: 429 Too Many Requests`, false, "transient"},
		{500, "some daemon bug", false, "unclassified"},
		// A digest that happens to contain 429 is not a rate limit.
		{404, "manifest for x@sha256:4290aa not found: manifest unknown", false, "notfound"},
	}
	for _, tt := range tests {
		t.Run(tt.msg, func(t *testing.T) {
			got := ClassifyDaemon(tt.status, tt.msg, tt.anon)
			if c := className(got); c != tt.want {
				t.Errorf("class = %s, want %s (%v)", c, tt.want, got)
			}
		})
	}
}

func TestMessagesAreClipped(t *testing.T) {
	long := strings.Repeat("A", 10000)
	err := ClassifyDaemon(500, "denied: "+long, false)
	if len(err.Error()) > maxMessage+100 {
		t.Errorf("message not bounded: %d bytes", len(err.Error()))
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
