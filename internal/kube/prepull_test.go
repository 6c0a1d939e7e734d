package kube

import (
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// The messages are the kubelet's (v1.34.4 on containerd 1.6.20), as the
// e2e cluster reported them.
func TestPullError(t *testing.T) {
	for _, tc := range []struct {
		reason, message string
		anonymous       bool
		want            string
	}{
		{"ErrImagePull", `failed to pull and unpack image "127.0.0.1:37445/acme/kube-public@sha256:c776": failed to resolve reference "127.0.0.1:37445/acme/kube-public@sha256:c776": failed to authorize: failed to fetch oauth token: unexpected status: 403 Forbidden`, false, "rejected"},
		{"ErrImagePull", `rpc error: code = NotFound desc = failed to pull and unpack image "127.0.0.1:37445/acme/kube-private:missing": failed to resolve reference "127.0.0.1:37445/acme/kube-private:missing": 127.0.0.1:37445/acme/kube-private:missing: not found`, false, "not-found"},
		{"ErrImagePull", `failed to pull and unpack image "127.0.0.1:39979/kube/x:1": failed to resolve reference "127.0.0.1:39979/kube/x:1": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed`, true, "anonymous-denied"},
		{"ImagePullBackOff", `Back-off pulling image "127.0.0.1:1/a:1": ErrImagePull: failed to fetch oauth token: unexpected status: 401 Unauthorized`, false, "rejected"},
		{"InvalidImageName", `Failed to apply default image tag "A:b": couldn't parse image name`, false, "bad-input:image"},
		{"PodInitializing", "", false, ""},
		{"ContainerCreating", "", false, ""},
	} {
		got := failure.ClassOf(PullError(tc.reason, tc.message, tc.anonymous))
		if got != tc.want {
			t.Errorf("%s %q: class %q, want %q", tc.reason, tc.message, got, tc.want)
		}
	}
}
