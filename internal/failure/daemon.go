package failure

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// daemonPhrases maps what Docker daemons (and containerd, through CRI;
// and Podman, whose containers/image words the token answer "Requesting
// bearer token: invalid status code from registry 403 (Forbidden)")
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
	{"invalid status code from registry 401", "rejected"}, // Podman: the token endpoint's answer
	{"invalid status code from registry 403", "rejected"},
	{"invalid status code from registry 404", "notfound"},
	{"invalid status code from registry 429", "transient"},
	{"invalid status code from registry 5", "transient"}, // 500 to 599
	{"no matching manifest", "platform"},
	{"no match for platform", "platform"}, // containerd's words for it
	{"manifest unknown", "notfound"},
	{"name unknown", "notfound"},
	{"not found: manifest", "notfound"},
	{"manifest for", "notfound"}, // "manifest for x:y not found"
	{"toomanyrequests", "toomany"},
	{"too many requests", "toomany"},
	{"rate limit", "toomany"},
	{"429 too many requests", "toomany"},
	{"status 429", "toomany"},
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

// FromDaemon places a pull error reported by a Docker daemon (or by
// containerd's CRI service, its gRPC code given as a status), from the
// HTTP status of the call (0 when the error came inside the JSON stream)
// and its message. Daemons relay registry answers only as text, so the
// registry's answer is read from their words here, through daemonPhrases.
func FromDaemon(status int, message string, anonymous bool) error {
	resp := Response{Status: status, Message: Clip(message), Where: "daemon"}
	lower := strings.ToLower(message)
	for _, p := range daemonPhrases {
		if !strings.Contains(lower, p.phrase) {
			continue
		}
		switch p.class {
		case "rejected":
			return &Rejected{Response: resp, Anonymous: anonymous}
		case "notfound":
			return &NotFound{Response: resp}
		case "platform":
			return Bad("platform", resp.Message, "pick a platform the image provides, or leave platform empty")
		case "transient":
			return &Transient{Response: resp}
		case "toomany":
			return &Transient{Response: resp, TooMany: true}
		}
	}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return &Rejected{Response: resp, Anonymous: anonymous}
	case status == http.StatusNotFound:
		return &NotFound{Response: resp}
	case status == http.StatusTooManyRequests || status >= 502:
		return &Transient{Response: resp}
	}
	return fmt.Errorf("daemon: %s", resp.Message)
}

// grpcCodeText finds a gRPC status in its text form, as the kubelet keeps
// it in a pull error: "rpc error: code = NotFound desc = ...".
var grpcCodeText = regexp.MustCompile(`\bcode = ([A-Za-z]+) desc = `)

// FromGRPC places a pull error of containerd's CRI image service by its
// gRPC code, the one code-to-class mapping: cri passes the status's code
// (codes.Code's String), kube the kubelet's text of it with code "" (it is
// then read from the text). containerd maps its error kinds onto codes
// (errdefs.ToGRPC), but relays a registry's answer only as text, so a code
// gives FromDaemon a status and the words decide first.
func FromGRPC(code, message string, anonymous bool) error {
	if code == "" {
		if m := grpcCodeText.FindStringSubmatch(message); m != nil {
			code = m[1]
		}
	}
	status := 0
	switch code {
	case "Unauthenticated":
		status = http.StatusUnauthorized
	case "PermissionDenied":
		status = http.StatusForbidden
	case "NotFound":
		status = http.StatusNotFound
	case "ResourceExhausted":
		status = http.StatusTooManyRequests
	case "Unavailable", "DeadlineExceeded", "Aborted":
		// The channel to containerd broke, or containerd gave up on the
		// registry: worth another try either way.
		return &Transient{Response: Response{Where: "daemon", Message: Clip(message)}}
	case "InvalidArgument":
		return Bad("image", "containerd refused the reference: "+Clip(message), "")
	}
	return FromDaemon(status, message, anonymous)
}
