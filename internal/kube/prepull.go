package kube

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Labels on everything Prepull creates: ManagedBy says whose it is, RunLabel
// which run made it (the clean-up and its check select by it).
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "ghcr-pull"
	RunLabel       = "ghcr-pull.io/run"
)

// noop is the command of the pre-pull containers: a path no image has, so
// the kubelet pulls the image, creates the container and fails to start
// it. The image's own code never runs on a node, and an image without a
// shell or any binary works alike; the container's imageID proves the pull.
const noop = "/.ghcr-pull-prepull-does-not-exist"

// PullAuth is the one registry credential the pull Secret holds.
type PullAuth struct {
	Registry, Username, Password string
}

// NodeResult is one node's outcome.
type NodeResult struct {
	Node string
	// ImageID is the kubelet's imageID of the pre-pull container
	// (repository@sha256:...); Digest its digest.
	ImageID, Digest string
	Duration        time.Duration
	Err             error
}

// Result is a Prepull's outcome: one entry per selected node, in name
// order, and the API requests it made.
type Result struct {
	Nodes    []NodeResult
	APICalls int
}

// NodeError is a node that could not pull for a reason of its own (not
// ready, tainted, out of time). It counts as transient.
type NodeError struct {
	Node, Kind, Reason string
}

// Kinds of NodeError.
const (
	NotReady      = "not-ready"
	Unschedulable = "unschedulable"
	TimedOut      = "timed-out"
)

func (e *NodeError) Error() string {
	return fmt.Sprintf("node %s %s: %s", e.Node, e.Kind, e.Reason)
}

// Unwrap makes a NodeError a failure.Transient: running again may work.
func (e *NodeError) Unwrap() error {
	return &failure.Transient{Response: failure.Response{Where: "node " + e.Node, Message: e.Kind + ": " + e.Reason}}
}

// Prepull pulls imageRef onto the selected nodes (only, when not empty,
// restricts them to those names) with a DaemonSet, sending auth through a
// pull Secret when it is not nil, and waits until each node reports the
// image, fails for good, or cfg.Timeout passes. Whatever happens, it then
// deletes what it created and checks that nothing of this run is left;
// an error is returned for the run as a whole (API refused, no node
// selected, something left), node failures are in Result.
func Prepull(ctx context.Context, cfg Config, imageRef string, auth *PullAuth, only []string) (res Result, err error) {
	var calls atomic.Int64
	tc := *cfg.transport
	tc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { calls.Add(1); return rt.RoundTrip(r) })
	})
	defer func() { res.APICalls = int(calls.Load()) }()
	c, err := newClient(&tc, cfg.Server, cfg.Namespace)
	if err != nil {
		return res, failure.Bad("kubeconfig", "no client for "+cfg.Server+": "+cfg.redact(err.Error()), "check the cluster entry")
	}
	start := time.Now()
	var nodes nodeList
	if err := c.list(ctx, "nodes", cfg.Selector.String(), &nodes); err != nil {
		return res, apiError(cfg, stage{listing, "nodes"}, err)
	}
	var targets []string
	for _, n := range nodes.Items {
		if len(only) > 0 && !slices.Contains(only, n.Metadata.Name) {
			continue
		}
		if e := unfit(n); e != nil {
			res.Nodes = append(res.Nodes, NodeResult{Node: n.Metadata.Name, Err: e})
			continue
		}
		targets = append(targets, n.Metadata.Name)
	}
	if len(nodes.Items) == 0 {
		sel := cfg.Selector.String()
		if sel == "" {
			return res, fmt.Errorf("the cluster at %s has no nodes", cfg.Server)
		}
		return res, failure.Bad("kube-node-selector", fmt.Sprintf("%q matches no node of the cluster at %s", sel, cfg.Server),
			"check the labels with kubectl get nodes --show-labels, or leave kube-node-selector empty for every node")
	}
	if len(targets) > 0 {
		// The clean-up is registered before anything is created: whatever
		// step fails, what exists is deleted (the Secret holds the
		// registry password). run records each object before creating it.
		r := &runObjects{id: runID()}
		defer func() { err = errors.Join(err, cleanUp(ctx, c, cfg, r)) }()
		got, werr := run(ctx, c, cfg, r, imageRef, auth, targets, start)
		if werr != nil {
			return res, werr
		}
		res.Nodes = append(res.Nodes, got...)
	}
	slices.SortFunc(res.Nodes, func(a, b NodeResult) int { return strings.Compare(a.Node, b.Node) })
	return res, nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func runID() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// tolerated are the taints a DaemonSet's pods tolerate by default (the
// DaemonSet controller adds them), plus not-ready, which unfit reports on
// its own.
var tolerated = []string{
	"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/disk-pressure",
	"node.kubernetes.io/memory-pressure", "node.kubernetes.io/pid-pressure", "node.kubernetes.io/unschedulable",
	"node.kubernetes.io/network-unavailable",
}

// unfit says why a node cannot run the pre-pull pod, before anything is
// created for it: it is not Ready, or a taint keeps the pod off.
func unfit(n node) error {
	ready := "the node has no Ready condition (its kubelet never reported)"
	for _, c := range n.Status.Conditions {
		if c.Type != "Ready" {
			continue
		}
		if c.Status == "True" {
			ready = ""
			break
		}
		ready = fmt.Sprintf("Ready is %s", c.Status)
		if c.Reason != "" || c.Message != "" {
			ready += fmt.Sprintf(" (%s: %s)", c.Reason, c.Message)
		}
	}
	if ready != "" {
		return &NodeError{Node: n.Metadata.Name, Kind: NotReady, Reason: ready}
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == "PreferNoSchedule" || slices.Contains(tolerated, t.Key) {
			continue
		}
		return &NodeError{Node: n.Metadata.Name, Kind: Unschedulable, Reason: fmt.Sprintf("taint %s=%s:%s keeps the pre-pull pod off (choose other nodes with kube-node-selector)", t.Key, t.Value, t.Effect)}
	}
	return nil
}

func objectName(id string) string { return "ghcr-pull-" + id }

func labelsOf(id string) obj { return obj{ManagedByLabel: ManagedBy, RunLabel: id} }

// dockerConfigJSON is the kubernetes.io/dockerconfigjson payload for one
// registry: what the kubelet hands the runtime as username and password.
func dockerConfigJSON(a PullAuth) ([]byte, error) {
	type entry struct {
		Username string `json:"username"`
		Password string `json:"password"`
		Auth     string `json:"auth"`
	}
	return json.Marshal(map[string]map[string]entry{"auths": {a.Registry: {
		Username: a.Username, Password: a.Password,
		Auth: base64.StdEncoding.EncodeToString([]byte(a.Username + ":" + a.Password)),
	}}})
}

// daemonSet is the pre-pull DaemonSet (apps/v1), pinned to nodes.
func daemonSet(id, imageRef, secret string, nodes []string) obj {
	ctr := func(name string) obj {
		return obj{
			"name": name, "image": imageRef, "command": []string{noop},
			// Always: the node proves it can pull now, with these
			// credentials, even when it holds the image already.
			"imagePullPolicy": "Always",
			"securityContext": obj{
				"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true, "runAsUser": 65534,
				"capabilities":   obj{"drop": []string{"ALL"}},
				"seccompProfile": obj{"type": "RuntimeDefault"},
			},
		}
	}
	spec := obj{
		// hostNetwork: the pod serves nothing, and a node whose network
		// plugin is not up yet can still pre-pull.
		"hostNetwork":                   true,
		"terminationGracePeriodSeconds": 0,
		"automountServiceAccountToken":  false,
		"enableServiceLinks":            false,
		"initContainers":                []obj{ctr("pull")},
		"containers":                    []obj{ctr("done")},
		"affinity": obj{"nodeAffinity": obj{"requiredDuringSchedulingIgnoredDuringExecution": obj{
			"nodeSelectorTerms": []obj{{"matchFields": []obj{{"key": "metadata.name", "operator": "In", "values": nodes}}}},
		}}},
	}
	if secret != "" {
		spec["imagePullSecrets"] = []obj{{"name": secret}}
	}
	return obj{
		"apiVersion": "apps/v1", "kind": "DaemonSet",
		"metadata": obj{"name": objectName(id), "labels": labelsOf(id)},
		"spec": obj{
			"selector": obj{"matchLabels": obj{RunLabel: id}},
			"template": obj{"metadata": obj{"labels": labelsOf(id)}, "spec": spec},
		},
	}
}

// runObjects are the objects of one run: its id (their name and label),
// and the resources it asked the API server to create, in order.
type runObjects struct {
	id      string
	created []string
}

func (r *runObjects) name() string { return objectName(r.id) }

// run creates the Secret and the DaemonSet and waits for the nodes.
func run(ctx context.Context, c *client, cfg Config, r *runObjects, imageRef string, auth *PullAuth, targets []string, start time.Time) ([]NodeResult, error) {
	secret := ""
	if auth != nil {
		data, err := dockerConfigJSON(*auth)
		if err != nil {
			return nil, err
		}
		s := obj{"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
			"metadata": obj{"name": r.name(), "labels": labelsOf(r.id)},
			"data":     obj{".dockerconfigjson": data}} // []byte: base64 in JSON, as the API wants
		// Recorded before the request: a create whose answer is lost may
		// still have made the object.
		r.created = append(r.created, "secrets")
		if err := c.create(ctx, "secrets", s); err != nil {
			return nil, apiError(cfg, stage{creating, "the pull Secret"}, err)
		}
		secret = r.name()
	}
	r.created = append(r.created, "daemonsets")
	if err := c.create(ctx, "daemonsets", daemonSet(r.id, imageRef, secret, targets)); err != nil {
		return nil, apiError(cfg, stage{creating, "the pre-pull DaemonSet"}, err)
	}
	w := &waiter{anonymous: auth == nil, start: start, open: map[string]*nodeState{}}
	for _, n := range targets {
		w.open[n] = &nodeState{}
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	err := w.wait(wctx, c, r.id)
	out := w.done
	for _, n := range targets {
		st, ok := w.open[n]
		if !ok {
			continue
		}
		reason := st.last
		if reason == "" {
			reason = "no pod status from the node's kubelet yet"
		}
		why := fmt.Sprintf("no image after %s; last seen: %s", time.Since(start).Round(time.Second), reason)
		if ctx.Err() != nil {
			why = "cancelled; last seen: " + reason
		}
		out = append(out, NodeResult{Node: n, Duration: time.Since(start), Err: &NodeError{Node: n, Kind: TimedOut, Reason: why}})
	}
	if err != nil && wctx.Err() == nil {
		return out, apiError(cfg, stage{watching, "the pre-pull pods"}, err)
	}
	return out, nil
}

type nodeState struct{ last string }

// waiter follows the run's pods until every node is decided.
type waiter struct {
	anonymous bool
	start     time.Time
	open      map[string]*nodeState
	done      []NodeResult
}

// wait lists the pods, then watches from that version; a watch the server
// ends is resumed from the last version seen.
func (w *waiter) wait(ctx context.Context, c *client, id string) error {
	sel := RunLabel + "=" + id
	var pods podList
	if err := c.list(ctx, "pods", sel, &pods); err != nil {
		return err
	}
	for i := range pods.Items {
		w.see(&pods.Items[i])
	}
	rv := pods.Metadata.ResourceVersion
	for len(w.open) > 0 {
		wi, err := c.watchPods(ctx, sel, rv)
		if err != nil {
			return err
		}
		events := 0
		for len(w.open) > 0 {
			typ, p, err := wi.next()
			var se *StatusError
			if err != nil && !errors.As(err, &se) && !isJSONError(err) {
				break // the server or the network ended the watch: resume it
			}
			if err != nil {
				wi.Close()
				return err
			}
			events++
			rv = p.Metadata.ResourceVersion
			if typ != "DELETED" && typ != "BOOKMARK" {
				w.see(p)
			}
		}
		wi.Close()
		if len(w.open) == 0 {
			return nil
		}
		pause := time.Duration(0)
		if events == 0 {
			pause = 250 * time.Millisecond // a server that ends every watch at once is not hammered
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
	}
	return nil
}

func isJSONError(err error) bool {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	return errors.As(err, &syn) || errors.As(err, &typ)
}

// see reads one pod's status: the imageID of its pull container decides
// success; a pull error that waiting cannot fix decides failure.
func (w *waiter) see(p *pod) {
	node := podNode(p)
	st, ok := w.open[node]
	if !ok {
		return
	}
	for _, c := range p.Status.Conditions {
		if c.Type == "PodScheduled" && c.Status == "False" {
			st.last = fmt.Sprintf("not scheduled (%s: %s)", c.Reason, c.Message)
		}
	}
	for _, cs := range p.Status.InitContainerStatuses {
		if cs.Name != "pull" {
			continue
		}
		if cs.ImageID != "" {
			w.finish(node, NodeResult{Node: node, ImageID: cs.ImageID, Digest: digestOf(cs.ImageID)})
			return
		}
		if wt := cs.State.Waiting; wt != nil {
			st.last = strings.TrimSpace(wt.Reason + ": " + wt.Message)
			if err := PullError(wt.Reason, wt.Message, w.anonymous); err != nil && final(err) {
				w.finish(node, NodeResult{Node: node, Err: err})
				return
			}
		}
	}
}

func (w *waiter) finish(node string, r NodeResult) {
	r.Duration = time.Since(w.start)
	w.done = append(w.done, r)
	delete(w.open, node)
}

// podNode is the node a DaemonSet pod is for: spec.nodeName once bound,
// before that the name in the node affinity the controller sets.
func podNode(p *pod) string {
	if p.Spec.NodeName != "" {
		return p.Spec.NodeName
	}
	for _, t := range p.Spec.Affinity.NodeAffinity.Required.Terms {
		for _, f := range t.MatchFields {
			if f.Key == "metadata.name" && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}

func digestOf(imageID string) string {
	if i := strings.LastIndex(imageID, "@"); i >= 0 {
		return imageID[i+1:]
	}
	if strings.HasPrefix(imageID, "sha256:") {
		return imageID
	}
	return ""
}

// PullError places a pull container's waiting state (reason and message,
// as the kubelet reports them): nil when it is no pull error. The kubelet
// relays the runtime's words and gRPC code, so classification is
// failure.FromGRPC's.
func PullError(reason, message string, anonymous bool) error {
	switch reason {
	case "ErrImagePull", "ImagePullBackOff":
	case "InvalidImageName":
		return failure.Bad("image", "the kubelet refused the reference: "+failure.Clip(message), "use a reference the kubelet accepts")
	default:
		return nil
	}
	if message == "" {
		message = reason
	}
	// The kubelet keeps containerd's gRPC code in the text ("rpc error:
	// code = NotFound desc = ... not found"): FromGRPC reads it there.
	return failure.FromGRPC("", reason+": "+message, anonymous)
}

// final: waiting longer would not change the answer (the kubelet would
// only retry with the same credentials).
func final(err error) bool {
	var rej *failure.Rejected
	var nf *failure.NotFound
	var bi *failure.BadInput
	return errors.As(err, &rej) || errors.As(err, &nf) || errors.As(err, &bi)
}

// verb is what a request did to the API, as its error words it.
type verb string

const (
	listing  verb = "listing"
	creating verb = "creating"
	watching verb = "watching"
)

// stage is what an API request was doing: the verb decides what its
// failure means (a 404 while creating is a missing namespace), the object
// only completes the words.
type stage struct {
	verb   verb
	object string
}

func (s stage) String() string { return string(s.verb) + " " + s.object }

// apiError names what the API server refused and the fix: a 401/403 or a
// missing namespace is the user's to change, anything else may pass.
func apiError(cfg Config, st stage, err error) error {
	doing := st.String()
	msg := failure.Clip(cfg.redact(err.Error()))
	r := cfg.refusal.orKubeconfig()
	var te *TokenError
	switch {
	case errors.As(err, &te):
		return te // the source's own error, classified where it was made
	case statusCode(err) == http.StatusUnauthorized:
		return failure.Bad(r.input, fmt.Sprintf("the API server at %s refused %s while %s: %s", cfg.Server, r.who, doing, msg), r.fix)
	case statusCode(err) == http.StatusForbidden:
		return failure.Bad(r.input, fmt.Sprintf("%s may not do this while %s: %s", r.who, doing, msg),
			"grant it exactly this role (docs/kubernetes.md): "+role(cfg.Namespace))
	case r.unreachable != "" && unreachable(err):
		return &failure.Transient{Response: failure.Response{Where: "API server " + cfg.Server, Message: doing + ": " + msg + "; " + r.unreachable}}
	case statusCode(err) == http.StatusNotFound && st.verb == creating:
		return failure.Bad("kube-namespace", fmt.Sprintf("%s failed: %s", doing, msg), "create the namespace or set kube-namespace to one that exists")
	}
	return &failure.Transient{Response: failure.Response{Where: "API server " + cfg.Server, Message: doing + ": " + msg}}
}

// CleanupError is one request of the clean-up that failed: Verb and
// Resource name what the API server refused (a rule the role lacks) or
// could not do, Name the object when there is one. Err is the API's answer,
// classified as any API error.
type CleanupError struct {
	Verb, Resource, Name, Namespace string
	Err                             error
}

func (e *CleanupError) Error() string {
	what := e.Resource
	if e.Name != "" {
		what += " " + e.Name
	}
	return fmt.Sprintf("clean-up: %s %s in namespace %s failed: %v", e.Verb, what, e.Namespace, e.Err)
}

func (e *CleanupError) Unwrap() error { return e.Err }

// cleanUp deletes what the run created, the DaemonSet first so it makes no
// new pod (its pods go with it: the garbage collector deletes them, and
// their grace period is 0), then the Secret, and checks, within a minute,
// that nothing labelled with the run is left. It runs on a context of its
// own, so a cancelled or timed-out run still cleans up. Every request that
// fails is an error naming its verb and resource: a failed clean-up is
// never ignored (the Secret holds the registry password).
func cleanUp(parent context.Context, c *client, cfg Config, r *runObjects) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), time.Minute)
	defer cancel()
	var errs []error
	failed := func(v, resource, name string, err error) {
		errs = append(errs, &CleanupError{Verb: v, Resource: resource, Name: name, Namespace: c.ns,
			Err: apiError(cfg, stage{verb(v), resource}, err)})
	}
	var check []string // what to list until it is empty
	for _, res := range slices.Backward(r.created) {
		// Not found: the create failed, or someone deleted it already.
		if err := c.delete(ctx, res, r.name()); err != nil && statusCode(err) != http.StatusNotFound {
			failed("delete", res, r.name(), err)
			continue
		}
		check = append(check, res)
		if res == "daemonsets" {
			check = append(check, "pods")
		}
	}
	sel := RunLabel + "=" + r.id
	var left []string
	for len(check) > 0 {
		left = left[:0]
		for _, res := range slices.Clone(check) {
			names, err := c.names(ctx, res, sel)
			if err != nil {
				failed("list", res, "", err)
				check = slices.DeleteFunc(check, func(s string) bool { return s == res })
				continue
			}
			if len(names) == 0 {
				// Gone, and nothing of the run makes one again.
				check = slices.DeleteFunc(check, func(s string) bool { return s == res })
			}
			for _, n := range names {
				left = append(left, strings.TrimSuffix(res, "s")+"/"+n)
			}
		}
		if len(left) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("clean-up: %s still there after a minute", strings.Join(left, ", ")))
			check = nil
		case <-time.After(250 * time.Millisecond):
		}
	}
	if len(errs) == 0 {
		return nil
	}
	errs = append(errs, fmt.Errorf("delete what run %s left with: kubectl delete -n %s daemonset,pod,secret -l %s=%s", r.id, c.ns, RunLabel, r.id))
	return errors.Join(errs...)
}
