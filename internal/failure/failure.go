// Package failure is ghcr-pull's failure vocabulary: what a peer said
// (Response), the few classes every failure falls into (Rejected, NotFound,
// Transient, BadInput), a UTF-8-safe clip for untrusted text (Clip, and
// ClipTail for the end of a command's stderr), and the one
// place secrets are redacted from text that leaves the process (Redactor).
// Every other package imports it; it imports none of them (only
// go-containerregistry's transport, to read a registry's answer).
//
// A class is decided once, where a peer's answer is read:
//
//   - FromRegistry: registry answers (status and distribution-spec code)
//     read through go-containerregistry, and the rest as FromNetwork;
//   - FromNetwork: context and network errors on the way to any peer
//     (a deadline, a name that does not resolve: NoSuchHost, a reset);
//   - FromDaemon: the text Docker, Podman and containerd relay of a
//     registry's answer, matched against daemonPhrases, the one table of
//     daemon words;
//   - FromGRPC: containerd's CRI errors by gRPC code, the one code
//     mapping, called by cri with the status and by kube.PullError with
//     the kubelet's text of it;
//   - kube's apiError: the Kubernetes API server's answers;
//   - the oidc client (oidc.Config.do, classifyAWS): identity providers;
//   - docker's classifyCall: the Engine API's call errors.
//
// An error of a package above names its own class with a Class() method:
// pull's drift, ghcr's quota, relay's cache limit, sshdeploy's refused
// forward and verify's three policy errors. Callers only ask errors.As, or
// ClassOf for the results' error_class.
package failure

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// Response is what a registry said, or what a daemon relayed of it. It is
// kept verbatim (clipped) so the action can report the peer's own words.
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

// Rejected: the peer refused the credentials that were sent (401 or 403 at
// the token endpoint or the registry, GHCR's DENIED). With Anonymous set,
// nothing was sent and the repository is private or absent.
type Rejected struct {
	Response
	Anonymous bool
}

func (e *Rejected) Error() string {
	if e.Anonymous {
		return "anonymous access denied: " + e.Response.String()
	}
	return "credentials rejected: " + e.Response.String()
}

// Forbidden tells a 403 (signed in, but no access to this repository)
// from a 401 (the credentials themselves were refused): registries that
// accept a login and then grant nothing answer 403, a wrong password 401.
// Daemons relay the status only in their words (dockerd 20.10 sends both
// as 500), so those count too. GHCR answers 403 for both at its token
// endpoint: callers that know the registry is GHCR must not rely on it.
func (e *Rejected) Forbidden() bool {
	return e.Status == http.StatusForbidden || strings.Contains(strings.ToLower(e.Message), "403 forbidden")
}

// NotFound: the repository or the tag/digest does not exist (or the
// platform asked for is not in the index). Falling back to anonymous would
// only hide it.
type NotFound struct {
	Response
}

func (e *NotFound) Error() string { return "not found: " + e.Response.String() }

// Transient: worth retrying (429, 5xx, timeouts, resets).
type Transient struct {
	Response
	// RetryAfter is the peer's Retry-After, zero when it sent none.
	RetryAfter time.Duration
	// TooMany is set when a daemon's words say the registry answered
	// 429 (toomanyrequests, rate limit): the status itself is lost in
	// the daemon's text.
	TooMany bool
	Err     error
}

// TooManyRequests says whether the peer answered 429, by status or, from
// a daemon, by its words.
func (e *Transient) TooManyRequests() bool {
	return e.Status == http.StatusTooManyRequests || e.TooMany
}

func (e *Transient) Error() string {
	s := e.Response.String()
	if e.Err != nil {
		if s != "" {
			s += ": "
		}
		s += e.Err.Error()
	}
	return "transient failure: " + s
}

func (e *Transient) Unwrap() error { return e.Err }

// Transient marks the error as retryable for internal/retry.
func (e *Transient) Transient() bool { return true }

// RetryDelay is the wait the peer asked for, if any.
func (e *Transient) RetryDelay() time.Duration { return e.RetryAfter }

// BadInput: the request itself is wrong (an invalid reference, a platform
// the image does not have, an unknown registry host, an input that does
// not parse). Input names the action input a user should change; Problem
// never quotes a secret.
type BadInput struct {
	Input   string
	Problem string
	Fix     string
}

// Bad is the one constructor of a BadInput: input names what to change,
// problem what is wrong with it (never quoting a secret), fix how to put
// it right ("" when the problem says it).
func Bad(input, problem, fix string) *BadInput {
	return &BadInput{Input: input, Problem: problem, Fix: fix}
}

func (e *BadInput) Error() string {
	s := fmt.Sprintf("input %q: %s", e.Input, e.Problem)
	if e.Fix != "" {
		s += " (" + e.Fix + ")"
	}
	return s
}

// MaxMessage bounds what is kept of a peer's text: it is echoed into logs,
// outputs and the summary, and a hostile peer can send megabytes.
const MaxMessage = 512

// Clip trims s and bounds it to MaxMessage bytes without splitting a UTF-8
// character; a clipped text ends in "…".
func Clip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) <= MaxMessage {
		return s
	}
	return s[:runeCut(s, MaxMessage, -1)] + "…"
}

// ClipTail is Clip keeping the end of s, for a command's stderr, whose last
// lines say what went wrong; a clipped text starts with "…".
func ClipTail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) <= MaxMessage {
		return s
	}
	return "…" + s[runeCut(s, len(s)-MaxMessage, +1):]
}

// runeCut moves the cut at byte i of s to the start of the rune it falls
// in (dir -1, keeping less before it) or of the next one (dir +1, keeping
// less after it): at most utf8.UTFMax-1 continuation bytes. A longer run
// is not UTF-8 at all (stray bytes), and is cut at i rather than emptied.
func runeCut(s string, i, dir int) int {
	cut := i
	for step := 0; step < utf8.UTFMax-1 && cut < len(s) && !utf8.RuneStart(s[cut]); step++ {
		cut += dir
	}
	if cut >= len(s) || !utf8.RuneStart(s[cut]) {
		return i
	}
	return cut
}

// The classes of an image a verify policy refused, named by the errors of
// internal/verify (through Class) where the signature is read, and read by
// the diagnosis that advises on them.
const (
	// Unsigned: nothing the policy could accept is attached to the digest.
	Unsigned = "unsigned"
	// InvalidSignature: a signature is attached but does not verify.
	InvalidSignature = "invalid-signature"
	// SignerMismatch: a signature verifies, by another signer than the
	// policy names.
	SignerMismatch = "signer-mismatch"
)

// ClassOf names err's class, as the results output reports it for deploy
// jobs to branch on: "rejected", "anonymous-denied", "not-found",
// "transient", "bad-input:<input>", "" for nil and "other" for an error
// no class fits. An error of a package above this one names its own class
// with a Class() string method (pull's drift, verify's Unsigned,
// InvalidSignature and SignerMismatch), so the vocabulary stays here
// without this package importing its callers.
func ClassOf(err error) string {
	var (
		rej   *Rejected
		nf    *NotFound
		tr    *Transient
		bad   *BadInput
		named interface{ Class() string }
	)
	switch {
	case err == nil:
		return ""
	case errors.As(err, &named):
		return named.Class()
	case errors.As(err, &rej) && rej.Anonymous:
		return "anonymous-denied"
	case errors.As(err, &rej):
		return "rejected"
	case errors.As(err, &nf):
		return "not-found"
	case errors.As(err, &tr):
		return "transient"
	case errors.As(err, &bad):
		return "bad-input:" + bad.Input
	}
	return "other"
}
