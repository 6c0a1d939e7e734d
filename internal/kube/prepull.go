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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

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
	rc := rest.CopyConfig(cfg.rest)
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) { calls.Add(1); return rt.RoundTrip(r) })
	})
	defer func() { res.APICalls = int(calls.Load()) }()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return res, bad("kubeconfig", "no client for "+cfg.Server+": "+redactAll(err.Error(), cfg.secrets), "check the cluster entry")
	}
	start := time.Now()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: cfg.Selector.String()})
	if err != nil {
		return res, apiError(cfg, "listing nodes", err)
	}
	var targets []string
	for _, n := range nodes.Items {
		if len(only) > 0 && !slices.Contains(only, n.Name) {
			continue
		}
		if e := unfit(n); e != nil {
			res.Nodes = append(res.Nodes, NodeResult{Node: n.Name, Err: e})
			continue
		}
		targets = append(targets, n.Name)
	}
	if len(nodes.Items) == 0 {
		sel := cfg.Selector.String()
		if sel == "" {
			return res, fmt.Errorf("the cluster at %s has no nodes", cfg.Server)
		}
		return res, bad("kube-node-selector", fmt.Sprintf("%q matches no node of the cluster at %s", sel, cfg.Server),
			"check the labels with kubectl get nodes --show-labels, or leave kube-node-selector empty for every node")
	}
	if len(targets) > 0 {
		id := runID()
		defer func() { err = errors.Join(err, cleanUp(ctx, cs, cfg, id)) }()
		got, werr := run(ctx, cs, cfg, id, imageRef, auth, targets, start)
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
func unfit(n corev1.Node) error {
	ready := "the node has no Ready condition (its kubelet never reported)"
	for _, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			ready = ""
			break
		}
		ready = fmt.Sprintf("Ready is %s", c.Status)
		if c.Reason != "" || c.Message != "" {
			ready += fmt.Sprintf(" (%s: %s)", c.Reason, c.Message)
		}
	}
	if ready != "" {
		return &NodeError{Node: n.Name, Kind: NotReady, Reason: ready}
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectPreferNoSchedule || slices.Contains(tolerated, t.Key) {
			continue
		}
		return &NodeError{Node: n.Name, Kind: Unschedulable, Reason: fmt.Sprintf("taint %s=%s:%s keeps the pre-pull pod off (choose other nodes with kube-node-selector)", t.Key, t.Value, t.Effect)}
	}
	return nil
}

func objectMeta(id string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: "ghcr-pull-" + id, Labels: map[string]string{ManagedByLabel: ManagedBy, RunLabel: id}}
}

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

func daemonSet(id, ns, imageRef string, secret string, nodes []string) *appsv1.DaemonSet {
	meta := objectMeta(id)
	meta.Namespace = ns
	zero, no, yes, nobody := int64(0), false, true, int64(65534)
	ctr := func(name string) corev1.Container {
		return corev1.Container{
			Name: name, Image: imageRef, Command: []string{noop},
			// Always: the node proves it can pull now, with these
			// credentials, even when it holds the image already.
			ImagePullPolicy: corev1.PullAlways,
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: &no, ReadOnlyRootFilesystem: &yes, RunAsNonRoot: &yes, RunAsUser: &nobody,
				Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}
	}
	spec := corev1.PodSpec{
		// hostNetwork: the pod serves nothing, and a node whose network
		// plugin is not up yet can still pre-pull.
		HostNetwork:                   true,
		TerminationGracePeriodSeconds: &zero,
		AutomountServiceAccountToken:  &no,
		EnableServiceLinks:            &no,
		InitContainers:                []corev1.Container{ctr("pull")},
		Containers:                    []corev1.Container{ctr("done")},
		Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{{
				Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: nodes,
			}}}},
		}}},
	}
	if secret != "" {
		spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: secret}}
	}
	return &appsv1.DaemonSet{
		ObjectMeta: meta,
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{RunLabel: id}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: meta.Labels}, Spec: spec},
		},
	}
}

// run creates the Secret and the DaemonSet and waits for the nodes.
func run(ctx context.Context, cs kubernetes.Interface, cfg Config, id, imageRef string, auth *PullAuth, targets []string, start time.Time) ([]NodeResult, error) {
	secret := ""
	if auth != nil {
		data, err := dockerConfigJSON(*auth)
		if err != nil {
			return nil, err
		}
		s := &corev1.Secret{ObjectMeta: objectMeta(id), Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: data}}
		if _, err := cs.CoreV1().Secrets(cfg.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return nil, apiError(cfg, "creating the pull Secret", err)
		}
		secret = s.Name
	}
	if _, err := cs.AppsV1().DaemonSets(cfg.Namespace).Create(ctx, daemonSet(id, cfg.Namespace, imageRef, secret, targets), metav1.CreateOptions{}); err != nil {
		return nil, apiError(cfg, "creating the pre-pull DaemonSet", err)
	}
	w := &waiter{anonymous: auth == nil, start: start, open: map[string]*nodeState{}}
	for _, n := range targets {
		w.open[n] = &nodeState{}
	}
	wctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	err := w.wait(wctx, cs, cfg.Namespace, id)
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
		return out, apiError(cfg, "watching the pre-pull pods", err)
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
func (w *waiter) wait(ctx context.Context, cs kubernetes.Interface, ns, id string) error {
	sel := metav1.ListOptions{LabelSelector: RunLabel + "=" + id}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, sel)
	if err != nil {
		return err
	}
	for i := range pods.Items {
		w.see(&pods.Items[i])
	}
	rv := pods.ResourceVersion
	for len(w.open) > 0 {
		opts := sel
		opts.ResourceVersion, opts.AllowWatchBookmarks = rv, true
		wi, err := cs.CoreV1().Pods(ns).Watch(ctx, opts)
		if err != nil {
			return err
		}
		for ev := range wi.ResultChan() {
			if ev.Type == watch.Error {
				wi.Stop()
				return apierrors.FromObject(ev.Object)
			}
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			rv = pod.ResourceVersion
			if ev.Type != watch.Deleted && ev.Type != watch.Bookmark {
				w.see(pod)
			}
			if len(w.open) == 0 {
				break
			}
		}
		wi.Stop()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// see reads one pod's status: the imageID of its pull container decides
// success; a pull error that waiting cannot fix decides failure.
func (w *waiter) see(pod *corev1.Pod) {
	node := podNode(pod)
	st, ok := w.open[node]
	if !ok {
		return
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			st.last = fmt.Sprintf("not scheduled (%s: %s)", c.Reason, c.Message)
		}
	}
	for _, cs := range pod.Status.InitContainerStatuses {
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
func podNode(pod *corev1.Pod) string {
	if pod.Spec.NodeName != "" {
		return pod.Spec.NodeName
	}
	if a := pod.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		for _, t := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, f := range t.MatchFields {
				if f.Key == "metadata.name" && len(f.Values) == 1 {
					return f.Values[0]
				}
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
// relays the runtime's words, so classification is failure.FromDaemon's.
func PullError(reason, message string, anonymous bool) error {
	switch reason {
	case "ErrImagePull", "ImagePullBackOff":
	case "InvalidImageName":
		return &failure.BadInput{Input: "image", Problem: "the kubelet refused the reference: " + failure.Clip(message), Fix: "use a reference the kubelet accepts"}
	default:
		return nil
	}
	if message == "" {
		message = reason
	}
	// The kubelet keeps containerd's gRPC code in the text ("rpc error:
	// code = NotFound desc = ... not found"): it is the surest status.
	status := 0
	switch {
	case strings.Contains(message, "code = NotFound"):
		status = http.StatusNotFound
	case strings.Contains(message, "code = Unauthenticated"):
		status = http.StatusUnauthorized
	case strings.Contains(message, "code = PermissionDenied"):
		status = http.StatusForbidden
	}
	return failure.FromDaemon(status, reason+": "+message, anonymous)
}

// final: waiting longer would not change the answer (the kubelet would
// only retry with the same credentials).
func final(err error) bool {
	var rej *failure.Rejected
	var nf *failure.NotFound
	var bi *failure.BadInput
	return errors.As(err, &rej) || errors.As(err, &nf) || errors.As(err, &bi)
}

// apiError names what the API server refused and the fix: a 401/403 or a
// missing namespace is the user's to change, anything else may pass.
func apiError(cfg Config, doing string, err error) error {
	msg := failure.Clip(redactAll(err.Error(), cfg.secrets))
	switch {
	case apierrors.IsUnauthorized(err):
		return bad("kubeconfig", fmt.Sprintf("the API server at %s refused the kubeconfig's credentials while %s: %s", cfg.Server, doing, msg), "renew the token or certificate in the kubeconfig")
	case apierrors.IsForbidden(err):
		return bad("kubeconfig", fmt.Sprintf("the kubeconfig's user may not do this while %s: %s", doing, msg),
			"grant it list/watch on nodes, list/watch/delete on pods, and create/list/delete on daemonsets and secrets in namespace "+cfg.Namespace)
	case apierrors.IsNotFound(err) && strings.Contains(doing, "creating"):
		return bad("kube-namespace", fmt.Sprintf("%s failed: %s", doing, msg), "create the namespace or set kube-namespace to one that exists")
	}
	return &failure.Transient{Response: failure.Response{Where: "API server " + cfg.Server, Message: doing + ": " + msg}}
}

// cleanUp deletes the run's DaemonSet, pods and Secret (pods at once, with
// no grace: they never ran anything) and checks, within a minute, that
// nothing labelled with the run is left. It runs on a context of its own,
// so a cancelled or timed-out run still cleans up.
func cleanUp(parent context.Context, cs kubernetes.Interface, cfg Config, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), time.Minute)
	defer cancel()
	zero := int64(0)
	bg := metav1.DeletePropagationBackground
	del := metav1.DeleteOptions{GracePeriodSeconds: &zero, PropagationPolicy: &bg}
	sel := metav1.ListOptions{LabelSelector: RunLabel + "=" + id}
	name := objectMeta(id).Name
	var errs []error
	ignore := func(err error) {
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	ignore(cs.AppsV1().DaemonSets(cfg.Namespace).Delete(ctx, name, del))
	ignore(cs.CoreV1().Pods(cfg.Namespace).DeleteCollection(ctx, del, sel))
	ignore(cs.CoreV1().Secrets(cfg.Namespace).Delete(ctx, name, del))
	var left []string
	for {
		left = left[:0]
		if l, err := cs.AppsV1().DaemonSets(cfg.Namespace).List(ctx, sel); err == nil {
			for _, o := range l.Items {
				left = append(left, "daemonset/"+o.Name)
			}
		}
		if l, err := cs.CoreV1().Pods(cfg.Namespace).List(ctx, sel); err == nil {
			for _, o := range l.Items {
				left = append(left, "pod/"+o.Name)
			}
		}
		if l, err := cs.CoreV1().Secrets(cfg.Namespace).List(ctx, sel); err == nil {
			for _, o := range l.Items {
				left = append(left, "secret/"+o.Name)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("clean-up of run %s left %s in namespace %s (delete them with kubectl delete -n %s daemonset,pod,secret -l %s=%s)",
				id, strings.Join(left, ", "), cfg.Namespace, cfg.Namespace, RunLabel, id))...)
		case <-time.After(250 * time.Millisecond):
		}
		// Pods the garbage collector or a late controller sync made.
		ignore(cs.CoreV1().Pods(cfg.Namespace).DeleteCollection(ctx, del, sel))
	}
}
