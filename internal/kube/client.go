package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"k8s.io/client-go/transport"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// The API client is net/http and encoding/json over client-go's transport
// (TLS and authentication as kubectl does them), reading into the few
// fields of objects.go. client-go's REST client and its serializers add
// 4 MiB to the stripped release binary, and k8s.io/api's core/v1 types 4
// more; the typed clientsets (kubernetes/scheme registers every API group)
// took it from 23.8 to 55.2 MiB. TestReleaseBinarySize keeps them out.

// Permission is one line of the role Prepull needs: the verbs it uses on
// a resource. Permissions is the whole role; docs/kubernetes.md prints it,
// the fake API server of the unit tests refuses anything else, and the
// end-to-end test binds a real cluster's identity to exactly it.
type Permission struct {
	Group, Resource string
	Verbs           []string
	// Namespaced: granted in the namespace of the run (a Role); else
	// cluster-wide (a ClusterRole).
	Namespaced bool
}

// Permissions: nodes are listed to pick the targets; the run's pods are
// listed and watched (they go with their DaemonSet, deleted by the garbage
// collector, so nothing deletes pods); the DaemonSet and the pull Secret
// are created, deleted, and listed to check that they are gone.
var Permissions = []Permission{
	{Resource: "nodes", Verbs: []string{"list"}},
	{Resource: "pods", Verbs: []string{"list", "watch"}, Namespaced: true},
	{Group: "apps", Resource: "daemonsets", Verbs: []string{"create", "list", "delete"}, Namespaced: true},
	{Resource: "secrets", Verbs: []string{"create", "list", "delete"}, Namespaced: true},
}

// role says Permissions in words, for an error's fix.
func role(ns string) string {
	var parts []string
	for _, p := range Permissions {
		where := "cluster-wide"
		if p.Namespaced {
			where = "in namespace " + ns
		}
		parts = append(parts, fmt.Sprintf("%s on %s %s", strings.Join(p.Verbs, "/"), p.Resource, where))
	}
	return strings.Join(parts, "; ")
}

// client reaches the API server's core/v1 and apps/v1 resources in one
// namespace.
type client struct {
	http   *http.Client
	server string
	ns     string
}

func newClient(tc *transport.Config, server, ns string) (*client, error) {
	rt, err := transport.New(tc)
	if err != nil {
		return nil, err
	}
	return &client{http: &http.Client{Transport: rt}, server: server, ns: ns}, nil
}

// StatusError is the API server's refusal: its HTTP code and the Status
// object's reason and message.
type StatusError struct {
	Code            int
	Reason, Message string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%d %s", e.Code, http.StatusText(e.Code))
	}
	return e.Message
}

func statusCode(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// url is resource's collection (name empty) or one object of it, in the
// client's namespace unless it is nodes.
func (c *client) url(resource, name string, query url.Values) string {
	p := "/api/v1"
	if resource == "daemonsets" {
		p = "/apis/apps/v1"
	}
	if resource != "nodes" {
		p += "/namespaces/" + url.PathEscape(c.ns)
	}
	p += "/" + resource
	if name != "" {
		p += "/" + url.PathEscape(name)
	}
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	return c.server + p
}

// send makes one request; a 2xx answer is decoded into into (when not
// nil), anything else is a *StatusError.
func (c *client) send(ctx context.Context, method, u string, body, into any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, readStatus(resp)
	}
	if into == nil {
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return resp, nil
	}
	return resp, nil
}

// readStatus is a refusal's Status object (metav1.Status), or its code
// and a clip of its body when it is none.
func readStatus(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st struct{ Reason, Message string }
	if json.Unmarshal(b, &st) != nil || st.Message == "" {
		st.Message = strings.TrimSpace(fmt.Sprintf("%s %s", resp.Status, failure.Clip(string(b))))
	}
	return &StatusError{Code: resp.StatusCode, Reason: st.Reason, Message: st.Message}
}

func (c *client) do(ctx context.Context, method, u string, body, into any) error {
	resp, err := c.send(ctx, method, u, body, into)
	if err != nil || into == nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		return fmt.Errorf("reading %s %s: %w", method, u, err)
	}
	return nil
}

func (c *client) list(ctx context.Context, resource, selector string, into any) error {
	return c.do(ctx, http.MethodGet, c.url(resource, "", url.Values{"labelSelector": {selector}}), nil, into)
}

func (c *client) create(ctx context.Context, resource string, obj any) error {
	return c.do(ctx, http.MethodPost, c.url(resource, "", nil), obj, nil)
}

// delete deletes one object at once (grace 0: nothing of ours ever ran),
// its dependents (a DaemonSet's pods) by the garbage collector.
func (c *client) delete(ctx context.Context, resource, name string) error {
	opts := map[string]any{"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "propagationPolicy": "Background"}
	return c.do(ctx, http.MethodDelete, c.url(resource, name, nil), opts, nil)
}

// names lists the names of resource's objects matching selector.
func (c *client) names(ctx context.Context, resource, selector string) ([]string, error) {
	var l struct{ Items []struct{ Metadata meta } }
	if err := c.list(ctx, resource, selector, &l); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(l.Items))
	for _, o := range l.Items {
		out = append(out, o.Metadata.Name)
	}
	return out, nil
}

// podWatch is a watch on pods: one JSON watch event after another.
type podWatch struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// watchEvent is a watch event (metav1.WatchEvent) of pods: Object is the
// pod, or for ERROR the Status.
type watchEvent struct {
	Type   string
	Object json.RawMessage
}

func (c *client) watchPods(ctx context.Context, selector, resourceVersion string) (*podWatch, error) {
	q := url.Values{"labelSelector": {selector}, "watch": {"true"}, "resourceVersion": {resourceVersion}, "allowWatchBookmarks": {"true"}}
	resp, err := c.send(ctx, http.MethodGet, c.url("pods", "", q), nil, struct{}{})
	if err != nil {
		return nil, err
	}
	return &podWatch{body: resp.Body, dec: json.NewDecoder(resp.Body)}, nil
}

// next is the next pod event; io.EOF when the server ended the watch, a
// *StatusError for an ERROR event.
func (w *podWatch) next() (string, *pod, error) {
	var ev watchEvent
	if err := w.dec.Decode(&ev); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.EOF
		}
		return "", nil, err
	}
	if ev.Type == "ERROR" {
		var st struct {
			Code            int
			Reason, Message string
		}
		_ = json.Unmarshal(ev.Object, &st)
		return "", nil, &StatusError{Code: st.Code, Reason: st.Reason, Message: st.Message}
	}
	var p pod
	if err := json.Unmarshal(ev.Object, &p); err != nil {
		return "", nil, fmt.Errorf("reading a watch event: %w", err)
	}
	return ev.Type, &p, nil
}

func (w *podWatch) Close() error { return w.body.Close() }
