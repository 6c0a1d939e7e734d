package ghcr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Response is what a registry said, or what a daemon relayed of it. It is
// kept verbatim (bounded) so the action can report the registry's own words.
type Response struct {
	// Status is the HTTP status; 0 when only text is known (a daemon's
	// progress stream carries no status).
	Status int
	// Code is the distribution-spec error code (DENIED, MANIFEST_UNKNOWN...).
	Code string
	// Message is the registry's message, or the daemon's text.
	Message string
	// Where is the party that answered: "token endpoint", "registry", "daemon".
	Where string
}

// String renders the response the way users search for it:
// "403 Forbidden at the token endpoint: DENIED: requested access ...".
func (r Response) String() string {
	var b strings.Builder
	if r.Status != 0 {
		fmt.Fprintf(&b, "%d %s", r.Status, http.StatusText(r.Status))
	}
	if r.Where != "" {
		if b.Len() > 0 {
			b.WriteString(" ")
		}
		b.WriteString("from the " + r.Where)
	}
	detail := r.Message
	if r.Code != "" && !strings.HasPrefix(detail, r.Code) {
		if detail == "" {
			detail = r.Code
		} else {
			detail = r.Code + ": " + detail
		}
	}
	if detail != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(detail)
	}
	return b.String()
}

// RejectedError: the registry refused the credentials that were sent (401 or
// 403 at the token endpoint or the registry, GHCR's DENIED). With Anonymous
// set, nothing was sent and the repository is private or absent.
type RejectedError struct {
	Response
	Anonymous bool
}

func (e *RejectedError) Error() string {
	if e.Anonymous {
		return "anonymous access denied: " + e.Response.String()
	}
	return "credentials rejected: " + e.Response.String()
}

// NotFoundError: the repository or the tag/digest does not exist (or the
// platform asked for is not in the index). Falling back to anonymous would
// only hide it.
type NotFoundError struct {
	Response
}

func (e *NotFoundError) Error() string { return "not found: " + e.Response.String() }

// TransientError: worth retrying (429, 5xx, timeouts, resets).
type TransientError struct {
	Response
	// RetryAfter is the registry's Retry-After, zero when it sent none.
	RetryAfter time.Duration
	Err        error
}

func (e *TransientError) Error() string {
	s := e.Response.String()
	if e.Err != nil {
		if s != "" {
			s += ": "
		}
		s += e.Err.Error()
	}
	return "transient failure: " + s
}

func (e *TransientError) Unwrap() error { return e.Err }

// Transient marks the error as retryable for internal/retry.
func (e *TransientError) Transient() bool { return true }

// RetryDelay is the wait the registry asked for, if any.
func (e *TransientError) RetryDelay() time.Duration { return e.RetryAfter }

// BadInputError: the request itself is wrong (an invalid reference, a
// platform the image does not have, an unknown registry host). Input names
// the action input a user should change.
type BadInputError struct {
	Input   string
	Problem string
	Fix     string
}

func (e *BadInputError) Error() string {
	s := fmt.Sprintf("input %q: %s", e.Input, e.Problem)
	if e.Fix != "" {
		s += " (" + e.Fix + ")"
	}
	return s
}

// maxMessage bounds what is kept of a peer's text: it is echoed into logs,
// outputs and the summary, and a hostile registry can send megabytes.
const maxMessage = 512

func clip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxMessage {
		return s[:maxMessage] + "…"
	}
	return s
}

// Classify turns an error from go-containerregistry or the network into one
// of the typed errors above. anonymous says whether credentials were sent,
// which decides what a 401/403 means. Errors it cannot place are returned
// unchanged.
func Classify(err error, anonymous bool) error {
	if err == nil {
		return nil
	}
	var (
		rej *RejectedError
		nf  *NotFoundError
		tr  *TransientError
		bad *BadInputError
	)
	if errors.As(err, &rej) || errors.As(err, &nf) || errors.As(err, &tr) || errors.As(err, &bad) {
		return err
	}

	var te *transport.Error
	if errors.As(err, &te) {
		return classifyTransport(te, anonymous)
	}

	if errors.Is(err, context.DeadlineExceeded) {
		return &TransientError{Err: errors.New("timed out"), Response: Response{Where: "registry"}}
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return &BadInputError{Input: "image", Problem: "registry host " + dns.Name + " does not resolve", Fix: "check the registry part of the image reference"}
	}
	var netErr net.Error
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return &TransientError{Err: err}
	}
	return err
}

func classifyTransport(te *transport.Error, anonymous bool) error {
	resp := Response{Status: te.StatusCode, Where: "registry"}
	if te.Request != nil && te.Request.URL != nil && !strings.HasPrefix(te.Request.URL.Path, "/v2/") {
		resp.Where = "token endpoint"
	}
	codes := make([]string, 0, len(te.Errors))
	msgs := make([]string, 0, len(te.Errors))
	for _, d := range te.Errors {
		codes = append(codes, string(d.Code))
		msgs = append(msgs, d.Message)
	}
	if len(codes) > 0 {
		resp.Code = codes[0]
		resp.Message = clip(strings.Join(msgs, "; "))
	} else {
		resp.Message = clip(http.StatusText(te.StatusCode))
	}
	has := func(want ...transport.ErrorCode) bool {
		for _, c := range codes {
			for _, w := range want {
				if c == string(w) {
					return true
				}
			}
		}
		return false
	}

	switch {
	case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden ||
		has(transport.UnauthorizedErrorCode, transport.DeniedErrorCode):
		return &RejectedError{Response: resp, Anonymous: anonymous}
	case te.StatusCode == http.StatusNotFound || has(transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode):
		return &NotFoundError{Response: resp}
	case te.StatusCode == http.StatusTooManyRequests || te.StatusCode == http.StatusRequestTimeout ||
		te.StatusCode >= 500 || has(transport.TooManyRequestsErrorCode):
		return &TransientError{Response: resp}
	case te.StatusCode == http.StatusBadRequest || has(transport.NameInvalidErrorCode, transport.TagInvalidErrorCode, transport.UnsupportedErrorCode):
		return &BadInputError{Input: "image", Problem: "the registry refused the reference: " + resp.String()}
	}
	return te
}

// daemonPhrases maps what Docker daemons (and containerd, through CRI)
// print in pull errors to a class.
// Order matters: a message naming both "denied" and "not exist" (docker's
// "pull access denied ... repository does not exist or may require 'docker
// login'") is an auth answer, so rejections are checked first.
var daemonPhrases = []struct {
	phrase string
	class  string
}{
	{"pull access denied", "rejected"},
	{"unauthorized", "rejected"},
	{"denied", "rejected"},
	{"authentication required", "rejected"},
	{"401 unauthorized", "rejected"},
	{"403 forbidden", "rejected"},
	{"failed to fetch oauth token", "rejected"},
	{"failed to fetch anonymous token", "rejected"},
	{"access token is expired", "rejected"},
	{"no basic auth credentials", "rejected"},
	{"no matching manifest", "platform"},
	{"no match for platform", "platform"}, // containerd's words for it
	{"manifest unknown", "notfound"},
	{"name unknown", "notfound"},
	{"not found: manifest", "notfound"},
	{"manifest for", "notfound"}, // "manifest for x:y not found"
	{"toomanyrequests", "transient"},
	{"too many requests", "transient"},
	{"rate limit", "transient"},
	{"429 too many requests", "transient"},
	{"status 429", "transient"},
	{"500 internal server error", "transient"},
	{"502 bad gateway", "transient"},
	{"503 service unavailable", "transient"},
	{"504 gateway timeout", "transient"},
	{"service unavailable", "transient"},
	{"timeout", "transient"},
	{"timed out", "transient"},
	{"connection reset", "transient"},
	{"connection refused", "transient"},
	{"unexpected eof", "transient"},
	{"broken pipe", "transient"},
	{": eof", "transient"},
}

// ClassifyDaemon places a pull error reported by a Docker daemon (or by
// containerd's CRI service, its gRPC code given as a status), from the
// HTTP status of the pull call (0 when the error came inside the JSON
// stream) and its message. The daemon relays registry answers only as text,
// so this is the one place ghcr-pull matches on words.
func ClassifyDaemon(status int, message string, anonymous bool) error {
	resp := Response{Status: status, Message: clip(message), Where: "daemon"}
	lower := strings.ToLower(message)
	for _, p := range daemonPhrases {
		if !strings.Contains(lower, p.phrase) {
			continue
		}
		switch p.class {
		case "rejected":
			return &RejectedError{Response: resp, Anonymous: anonymous}
		case "notfound":
			return &NotFoundError{Response: resp}
		case "platform":
			return &BadInputError{Input: "platform", Problem: resp.Message, Fix: "pick a platform the image provides, or leave platform empty"}
		case "transient":
			return &TransientError{Response: resp}
		}
	}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return &RejectedError{Response: resp, Anonymous: anonymous}
	case status == http.StatusNotFound:
		return &NotFoundError{Response: resp}
	case status == http.StatusTooManyRequests || status >= 502:
		return &TransientError{Response: resp}
	}
	return fmt.Errorf("daemon: %s", resp.Message)
}
