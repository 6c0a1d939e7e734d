package failure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"testing"

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
			got := FromRegistry(tt.err, tt.anonymous)
			if c := ClassOf(got); c != tt.want {
				t.Fatalf("class = %s, want %s (%v)", c, tt.want, got)
			}
			if tt.wantWhere != "" {
				var rej *Rejected
				var nf *NotFound
				var tr *Transient
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
			if FromRegistry(got, tt.anonymous) != got {
				t.Errorf("classifying twice changed the error")
			}
		})
	}
}

func TestRejectedErrorKeepsRegistryWords(t *testing.T) {
	err := FromRegistry(tErr(403, "/token", diag("DENIED", "requested access to the resource is denied")), false)
	want := "credentials rejected: 403 Forbidden from the token endpoint: DENIED: requested access to the resource is denied"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err.Error(), want)
	}
}
