package failure

import (
	"strings"
	"testing"
	"unicode/utf8"
)

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
		{404, "manifest for 127.0.0.1:5000/acme/app:nope not found: manifest unknown: manifest unknown", false, "not-found"},
		{0, "no matching manifest for linux/arm64/v8 in the manifest list entries", false, "bad-input:platform"},
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
		{404, `failed to pull and unpack image "10.231.1.1:41293/acme/app:nope": failed to resolve reference "10.231.1.1:41293/acme/app:nope": 10.231.1.1:41293/acme/app:nope: not found`, false, "not-found"},
		{404, `failed to pull and unpack image "10.231.1.1:46801/acme/app:arm": no match for platform in manifest: not found`, false, "bad-input:platform"},
		{0, `failed to pull and unpack image "10.231.1.1:41293/acme/app:1": failed to resolve reference "10.231.1.1:41293/acme/app:1": pulling from host 10.231.1.1:41293 failed with status code [manifests 1]: 429 Too Many Requests`, false, "transient"},
		// Podman 4.3.1's compat API (containers/image), errors in the stream.
		{0, "initializing source docker://10.231.1.1:41293/acme/private/app@sha256:" + strings.Repeat("a", 64) + ": Requesting bearer token: invalid status code from registry 403 (Forbidden)", false, "rejected"},
		{0, "initializing source docker://10.231.1.1:41293/acme/private:1: Requesting bearer token: invalid status code from registry 401 (Unauthorized)", true, "anonymous-denied"},
		{0, "initializing source docker://10.231.1.1:41293/acme/app:1: Requesting bearer token: invalid status code from registry 503 (Service Unavailable)", false, "transient"},
		{0, "initializing source docker://10.231.1.1:41293/acme/app:1: Requesting bearer token: invalid status code from registry 429 (Too Many Requests)", false, "transient"},
		{0, "initializing source docker://127.0.0.1:5999/x/nope:1: reading manifest 1 in 127.0.0.1:5999/x/nope: manifest unknown: manifest unknown", false, "not-found"},
		{0, "initializing source docker://10.231.1.1:41293/acme/private:1: reading manifest 1 in 10.231.1.1:41293/acme/private: unauthorized: authentication required", true, "anonymous-denied"},
		{0, `initializing source docker://10.231.1.1:41293/acme/app:1: pinging container registry 10.231.1.1:41293: Get "http://10.231.1.1:41293/v2/": dial tcp 10.231.1.1:41293: connect: connection refused`, false, "transient"},
		{500, "some daemon bug", false, "other"},
		// A digest that happens to contain 429 is not a rate limit.
		{404, "manifest for x@sha256:4290aa not found: manifest unknown", false, "not-found"},
	}
	for _, tt := range tests {
		t.Run(tt.msg, func(t *testing.T) {
			got := FromDaemon(tt.status, tt.msg, tt.anon)
			if c := ClassOf(got); c != tt.want {
				t.Errorf("class = %s, want %s (%v)", c, tt.want, got)
			}
			// A 429 in the daemon's words is known as one (the pull
			// quota reads it).
			tr, ok := got.(*Transient)
			want429 := strings.Contains(tt.msg, "toomanyrequests") || strings.Contains(tt.msg, "429 Too Many")
			if ok && tr.TooManyRequests() != want429 {
				t.Errorf("TooManyRequests() = %v, want %v", tr.TooManyRequests(), want429)
			}
		})
	}
}

func TestMessagesAreClipped(t *testing.T) {
	long := strings.Repeat("A", 10000)
	err := FromDaemon(500, "denied: "+long, false)
	if len(err.Error()) > MaxMessage+100 {
		t.Errorf("message not bounded: %d bytes", len(err.Error()))
	}
}

func TestClipKeepsUTF8Whole(t *testing.T) {
	for _, pad := range []int{0, 1, 2, 3} {
		s := strings.Repeat("a", MaxMessage-pad) + strings.Repeat("é€😀", 50)
		got := Clip(s)
		if !utf8.ValidString(got) {
			t.Fatalf("pad %d: clip split a character: %q", pad, got[len(got)-8:])
		}
		if !strings.HasSuffix(got, "…") || len(got) > MaxMessage+len("…") {
			t.Fatalf("pad %d: clipped to %d bytes, want at most %d and an ellipsis", pad, len(got), MaxMessage+len("…"))
		}
	}
	// Stray continuation bytes are not a rune to keep whole: the text is
	// cut at the limit, not emptied (a fuzzer's find).
	if got := Clip(strings.Repeat("\xa9", 2*MaxMessage)); len(got) != MaxMessage+len("…") {
		t.Errorf("Clip of stray bytes kept %d bytes, want %d", len(got), MaxMessage+len("…"))
	}
	if got := Clip("  short  "); got != "short" {
		t.Errorf("Clip(short) = %q", got)
	}
}

// ClipTail keeps the end whole too: a command's last words, starting at a
// rune, whichever byte of a multi-byte rune the limit falls on.
func TestClipTailKeepsUTF8Whole(t *testing.T) {
	for _, pad := range []int{0, 1, 2, 3} {
		s := strings.Repeat("é€😀", 50) + strings.Repeat("a", MaxMessage-pad)
		got := ClipTail(s)
		if !utf8.ValidString(got) {
			t.Fatalf("pad %d: clip split a character: %q", pad, got[:8])
		}
		if !strings.HasPrefix(got, "…") || !strings.HasSuffix(s, strings.TrimPrefix(got, "…")) || len(got) > MaxMessage+len("…") {
			t.Fatalf("pad %d: %d bytes %q…, want the end of the text after an ellipsis, at most %d bytes", pad, len(got), got[:12], MaxMessage+len("…"))
		}
	}
	if got := ClipTail(strings.Repeat("\xa9", 2*MaxMessage)); len(got) != MaxMessage+len("…") {
		t.Errorf("ClipTail of stray bytes kept %d bytes, want %d", len(got), MaxMessage+len("…"))
	}
	if got := ClipTail("  short  "); got != "short" {
		t.Errorf("ClipTail(short) = %q", got)
	}
}

// One gRPC-code mapping for cri (the status's code) and kube (the
// kubelet's text of it): each code gives the same class either way.
func TestFromGRPC(t *testing.T) {
	for _, tt := range []struct {
		code, desc string
		anonymous  bool
		want       string
	}{
		{"NotFound", "failed to resolve reference \"r.example/a:nope\": r.example/a:nope: not found", false, "not-found"},
		{"NotFound", "no match for platform in manifest: not found", false, "bad-input:platform"},
		{"Unauthenticated", "failed to resolve reference", false, "rejected"},
		{"PermissionDenied", "failed to resolve reference", true, "anonymous-denied"},
		{"ResourceExhausted", "failed to resolve reference", false, "transient"},
		{"Unavailable", "connection error", false, "transient"},
		{"DeadlineExceeded", "context deadline exceeded", false, "transient"},
		{"Aborted", "aborted", false, "transient"},
		{"InvalidArgument", `failed to parse "x::1"`, false, "bad-input:image"},
		{"Unknown", "failed to fetch oauth token: unexpected status: 403 Forbidden", false, "rejected"},
		{"Unknown", "disk full", false, "other"},
	} {
		direct := ClassOf(FromGRPC(tt.code, tt.desc, tt.anonymous))
		relayed := ClassOf(FromGRPC("", "ErrImagePull: rpc error: code = "+tt.code+" desc = "+tt.desc, tt.anonymous))
		if direct != tt.want || relayed != tt.want {
			t.Errorf("%s %q: class %q, from the kubelet's text %q, want %q", tt.code, tt.desc, direct, relayed, tt.want)
		}
	}
}
