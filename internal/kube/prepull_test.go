package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

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

func TestPrepullSuccess(t *testing.T) {
	tainted := readyNode("c-tainted")
	tainted["spec"] = obj{"taints": []obj{{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}}}
	f := newFakeAPI(t, readyNode("a"), readyNode("b"), tainted,
		obj{"metadata": obj{"name": "d-down"}, "status": obj{"conditions": []obj{{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}}}})
	f.status = func(node string) obj {
		if node == "b" {
			return obj{"name": "pull", "state": obj{"waiting": obj{"reason": "ErrImagePull", "message": `failed to pull and unpack image "reg.example/acme/app:1": failed to resolve reference: unexpected status: 401 Unauthorized`}}}
		}
		return obj{"name": "pull", "imageID": "reg.example/acme/app@sha256:aaaa"}
	}
	f.endWatch = 1 // the server ends the first watch: it is resumed
	auth := &PullAuth{Registry: "reg.example", Username: "u", Password: "pw-canary"}
	res, err := Prepull(context.Background(), f.config(t, time.Minute), "reg.example/acme/app:1", auth, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Nodes) != 4 {
		t.Fatalf("nodes = %+v", res.Nodes)
	}
	a, b, c, d := res.Nodes[0], res.Nodes[1], res.Nodes[2], res.Nodes[3]
	if a.Node != "a" || a.Err != nil || a.Digest != "sha256:aaaa" || a.ImageID != "reg.example/acme/app@sha256:aaaa" {
		t.Errorf("a = %+v", a)
	}
	if b.Node != "b" || failure.ClassOf(b.Err) != "rejected" {
		t.Errorf("b = %+v (class %s), want rejected", b, failure.ClassOf(b.Err))
	}
	var ne *NodeError
	if c.Node != "c-tainted" || !errors.As(c.Err, &ne) || ne.Kind != Unschedulable || !strings.Contains(ne.Reason, "dedicated=gpu:NoSchedule") {
		t.Errorf("c = %+v", c)
	}
	if d.Node != "d-down" || !errors.As(d.Err, &ne) || ne.Kind != NotReady || !strings.Contains(ne.Reason, "KubeletNotReady") {
		t.Errorf("d = %+v", d)
	}
	if left := f.left(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	reqs := f.requested()
	if n := strings.Count(strings.Join(reqs, ","), "watch pods"); n != 2 {
		t.Errorf("%d watches, want 2 (the ended one resumed): %v", n, reqs)
	}
	if res.APICalls != len(reqs) {
		t.Errorf("APICalls = %d, the server saw %d", res.APICalls, len(reqs))
	}
}

// What the API server receives: a DaemonSet pinned to the fit nodes,
// naming the pull Secret, its containers hardened; a Secret holding the
// credential for the image's registry.
func TestPrepullObjects(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"), readyNode("b"))
	auth := &PullAuth{Registry: "reg.example", Username: "u", Password: "pw-canary"}
	if _, err := Prepull(context.Background(), f.config(t, time.Minute), "reg.example/acme/app:1", auth, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	ds, secret := f.posted["daemonsets"], f.posted["secrets"]
	if ds == nil || secret == nil {
		t.Fatalf("posted %v", f.posted)
	}
	var d struct {
		Metadata struct {
			Name   string
			Labels map[string]string
		}
		Spec struct {
			Template struct {
				Spec struct {
					HostNetwork      bool
					ImagePullSecrets []struct{ Name string }
					InitContainers   []struct {
						Image, ImagePullPolicy string
						Command                []string
						SecurityContext        struct {
							RunAsNonRoot bool
							Capabilities struct{ Drop []string }
						}
					}
					Affinity struct {
						NodeAffinity struct {
							Required struct {
								Terms []struct{ MatchFields []struct{ Values []string } } `json:"nodeSelectorTerms"`
							} `json:"requiredDuringSchedulingIgnoredDuringExecution"`
						}
					}
				}
			}
		}
	}
	b, _ := json.Marshal(ds)
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	spec := d.Spec.Template.Spec
	if !strings.HasPrefix(d.Metadata.Name, "ghcr-pull-") || d.Metadata.Labels[ManagedByLabel] != ManagedBy || d.Metadata.Labels[RunLabel] == "" {
		t.Errorf("metadata %+v", d.Metadata)
	}
	if len(spec.ImagePullSecrets) != 1 || spec.ImagePullSecrets[0].Name != d.Metadata.Name || !spec.HostNetwork {
		t.Errorf("pod spec %+v", spec)
	}
	if c := spec.InitContainers; len(c) != 1 || c[0].Image != "reg.example/acme/app:1" || c[0].ImagePullPolicy != "Always" ||
		!slices.Equal(c[0].Command, []string{noop}) || !c[0].SecurityContext.RunAsNonRoot || !slices.Equal(c[0].SecurityContext.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("init container %+v", c)
	}
	if terms := spec.Affinity.NodeAffinity.Required.Terms; len(terms) != 1 || !slices.Equal(terms[0].MatchFields[0].Values, []string{"b"}) {
		t.Errorf("affinity %+v, want node b only", terms)
	}
	var sec struct {
		Type string
		Data map[string][]byte
	}
	b, _ = json.Marshal(secret)
	if err := json.Unmarshal(b, &sec); err != nil {
		t.Fatal(err)
	}
	var dc struct {
		Auths map[string]struct{ Username, Password string }
	}
	if err := json.Unmarshal(sec.Data[".dockerconfigjson"], &dc); err != nil || sec.Type != "kubernetes.io/dockerconfigjson" || dc.Auths["reg.example"].Password != "pw-canary" {
		t.Errorf("secret %s: %+v (%v)", b, dc, err)
	}
}

// Whatever step fails after the Secret exists, the clean-up deletes what
// the run created (the Secret holds the registry password), with only the
// documented role's verbs, and the run's error names the step.
func TestPrepullCleansUpAfterAnyFailure(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(f *fakeAPI)
		ctx   func() (context.Context, context.CancelFunc)
		want  string // in the error; "" for a per-node outcome
		class string
	}{
		{name: "DaemonSet create refused (403)", want: "creating the pre-pull DaemonSet", class: "bad-input:Kubeconfig",
			setup: func(f *fakeAPI) { f.fault = only("create daemonsets", 403, false) }},
		{name: "DaemonSet created, its answer lost (500)", want: "creating the pre-pull DaemonSet", class: "transient",
			setup: func(f *fakeAPI) { f.fault = only("create daemonsets", 500, true) }},
		{name: "Secret created, its answer lost (500)", want: "creating the pull Secret", class: "transient",
			setup: func(f *fakeAPI) { f.fault = only("create secrets", 500, true) }},
		{name: "Secret create answers 404: the namespace is missing", want: "creating the pull Secret", class: "bad-input:Namespace",
			setup: func(f *fakeAPI) { f.fault = only("create secrets", 404, false) }},
		{name: "the watch answers 404: no namespace advice, not a create", want: "watching the pre-pull pods", class: "transient",
			setup: func(f *fakeAPI) { f.fault = only("watch pods", 404, false) }},
		{name: "listing the pods fails", want: "watching the pre-pull pods", class: "transient",
			setup: func(f *fakeAPI) { f.fault = only("list pods", 500, false) }},
		{name: "the watch is refused", want: "watching the pre-pull pods", class: "transient",
			setup: func(f *fakeAPI) { f.fault = only("watch pods", 500, false) }},
		{name: "the watch breaks with an error event", want: "watching the pre-pull pods", class: "transient",
			setup: func(f *fakeAPI) { f.status = func(string) obj { return obj{"name": "pull"} }; f.watchError = true }},
		{name: "timed out",
			setup: func(f *fakeAPI) { f.status = func(string) obj { return obj{"name": "pull"} }; f.holdWatch = true }},
		{name: "cancelled",
			setup: func(f *fakeAPI) { f.status = func(string) obj { return obj{"name": "pull"} }; f.holdWatch = true },
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 300*time.Millisecond)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t, readyNode("a"))
			tc.setup(f)
			ctx, cancel := context.WithCancel(context.Background())
			if tc.ctx != nil {
				ctx, cancel = tc.ctx()
			}
			defer cancel()
			auth := &PullAuth{Registry: "reg.example", Username: "u", Password: "pw-canary"}
			res, err := Prepull(ctx, f.config(t, 500*time.Millisecond), "reg.example/acme/app:1", auth, nil)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) || failure.ClassOf(err) != tc.class {
					t.Errorf("err = %v (class %s), want %q, class %s", err, failure.ClassOf(err), tc.want, tc.class)
				}
			} else {
				var ne *NodeError
				if err != nil || len(res.Nodes) != 1 || !errors.As(res.Nodes[0].Err, &ne) || ne.Kind != TimedOut {
					t.Errorf("err = %v, nodes %+v, want one timed-out node", err, res.Nodes)
				}
			}
			if left := f.left(); len(left) > 0 {
				t.Errorf("left behind: %v (requests %v)", left, f.requested())
			}
			if !slices.Contains(f.requested(), "delete secrets") {
				t.Errorf("the Secret was never deleted: %v", f.requested())
			}
		})
	}
}

// cleanupErrors are the CleanupErrors in err's tree, in order.
func cleanupErrors(err error) []*CleanupError {
	if ce, ok := err.(*CleanupError); ok {
		return []*CleanupError{ce}
	}
	var out []*CleanupError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, cleanupErrors(e)...)
		}
	}
	return out
}

func only(req string, code int, keep bool) func(string) (int, bool) {
	return func(r string) (int, bool) {
		if r == req {
			return code, keep
		}
		return 0, false
	}
}

// A clean-up that fails is never ignored: the run's error names each
// refused request by verb and resource, and how to delete what is left.
func TestPrepullReportsFailedCleanUp(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"))
	f.fault = func(r string) (int, bool) {
		switch r {
		case "delete secrets":
			return 403, false
		case "list daemonsets":
			return 500, false
		}
		return 0, false
	}
	auth := &PullAuth{Registry: "reg.example", Username: "u", Password: "pw-canary"}
	start := time.Now()
	res, err := Prepull(context.Background(), f.config(t, time.Minute), "reg.example/acme/app:1", auth, nil)
	if len(res.Nodes) != 1 || res.Nodes[0].Err != nil {
		t.Errorf("nodes = %+v: the pull itself worked", res.Nodes)
	}
	ces := cleanupErrors(err)
	if len(ces) != 2 || ces[0].Verb != "delete" || ces[0].Resource != "secrets" || !strings.HasPrefix(ces[0].Name, "ghcr-pull-") ||
		ces[1].Verb != "list" || ces[1].Resource != "daemonsets" || ces[0].Namespace != "team" {
		t.Fatalf("clean-up errors = %+v, want delete secrets, list daemonsets", ces)
	}
	msg := err.Error()
	for _, want := range []string{"delete secrets ghcr-pull-", "list daemonsets", "kubectl delete -n team daemonset,pod,secret -l ghcr-pull.io/run="} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if failure.ClassOf(ces[0]) != "bad-input:Kubeconfig" {
		t.Errorf("a refused delete is class %s, want bad-input:Kubeconfig (the role's fix)", failure.ClassOf(ces[0]))
	}
	// The refused object is reported, not waited for.
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %s", took)
	}
	if left := f.left(); !slices.Equal(left, []string{"secrets/" + ces[0].Name}) {
		t.Errorf("left = %v, want the Secret only", left)
	}
}

// The kubeconfig's secrets never reach an error, even when the API server
// echoes them.
func TestPrepullRedactsEchoedToken(t *testing.T) {
	f := newFakeAPI(t, readyNode("a"))
	f.fault = func(r string) (int, bool) { return 0, false }
	f.echo = true
	_, err := Prepull(context.Background(), f.config(t, time.Minute), "reg.example/acme/app:1", nil, nil)
	if err == nil || strings.Contains(err.Error(), f.token) || !strings.Contains(err.Error(), failure.Redacted) {
		t.Errorf("err = %v", err)
	}
}

// TestPermissionsDocumented: docs/kubernetes.md prints Permissions, the
// role the tests grant.
func TestPermissionsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Permissions {
		scope := "cluster-wide"
		if p.Namespaced {
			scope = "namespace"
		}
		group := p.Group
		if group == "" {
			group = `""`
		}
		row := fmt.Sprintf("| %s | %s | %s | %s |", group, p.Resource, strings.Join(p.Verbs, ", "), scope)
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/kubernetes.md lacks the row %q", row)
		}
	}
}
