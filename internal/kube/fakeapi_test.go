package kube

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAPI is an in-process API server for the REST paths Prepull uses. It
// authorizes like RBAC with exactly Permissions (anything else is a 403,
// as a cluster whose identity is bound to the documented role answers),
// plays the DaemonSet controller (a pending pod per pinned node) and the
// garbage collector (a deleted DaemonSet's pods go), and answers a pod
// watch with each pod's next status. Faults are injected per request.
type fakeAPI struct {
	t      *testing.T
	srv    *httptest.Server
	token  string
	ns     string
	nodes  []obj
	status func(node string) obj // the pull container's status after the first watch event

	mu       sync.Mutex
	objects  map[string]map[string]obj // resource → name → object
	requests []string                  // "verb resource"
	rv       int
	// fault, when it answers non-zero for a request ("verb resource"), is
	// that request's status; keep (with a fault) still stores a create.
	fault func(req string) (code int, keep bool)
	// endWatch: the server ends the first n watches at once (no event).
	endWatch int
	// holdWatch: after its events, a watch stays open until the client
	// goes (the pods never finish).
	holdWatch bool
	// watchError: a watch sends an ERROR event (410 Gone) after its events.
	watchError bool
	// echo: every refusal quotes the request's Authorization header, as a
	// careless proxy might.
	echo    bool
	watches int
	// posted is the last object created of each resource.
	posted map[string]obj
	// accept, when set, decides a bearer token in place of token (a
	// keyless cluster's tokens, which expire); req is "METHOD path".
	accept func(token, req string) bool
}

func (f *fakeAPI) authorized(r *http.Request) bool {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if f.accept != nil {
		return f.accept(tok, r.Method+" "+r.URL.Path)
	}
	return tok == f.token
}

func newFakeAPI(t *testing.T, nodes ...obj) *fakeAPI {
	f := &fakeAPI{t: t, token: "fake-token-" + t.Name(), ns: "team", nodes: nodes,
		objects: map[string]map[string]obj{"secrets": {}, "daemonsets": {}, "pods": {}}, posted: map[string]obj{},
		status: func(string) obj {
			return obj{"name": "pull", "imageID": "reg.example/acme/app@sha256:aaaa"}
		}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func readyNode(name string) obj {
	return obj{"metadata": obj{"name": name}, "status": obj{"conditions": []obj{{"type": "Ready", "status": "True"}}}}
}

func (f *fakeAPI) kubeconfig() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {server: %q}
users:
- name: u
  user: {token: %q}
contexts:
- name: fake
  context: {cluster: fake, user: u, namespace: %s}
current-context: fake
`, f.srv.URL, f.token, f.ns)
}

func (f *fakeAPI) config(t *testing.T, timeout time.Duration) Config {
	t.Helper()
	cfg, err := ParseConfig(f.kubeconfig(), "", "", "", timeout)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// left lists the objects of ghcr-pull's that the fake still holds.
func (f *fakeAPI) left() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for res, objs := range f.objects {
		for name := range objs {
			out = append(out, res+"/"+name)
		}
	}
	slices.Sort(out)
	return out
}

func (f *fakeAPI) requested() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(obj{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": msg})
}

func allowed(verb, resource string, namespaced bool) bool {
	for _, p := range Permissions {
		if p.Resource == resource && p.Namespaced == namespaced && slices.Contains(p.Verbs, verb) {
			return true
		}
	}
	return false
}

// route reads a request: the RBAC verb, the resource, the object's name.
func (f *fakeAPI) route(r *http.Request) (verb, resource, name string, ok bool) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "nodes":
		parts = parts[2:]
	case len(parts) >= 5 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" && parts[3] == f.ns && parts[4] != "daemonsets":
		parts = parts[4:]
	case len(parts) >= 6 && strings.Join(parts[:3], "/") == "apis/apps/v1" && parts[3] == "namespaces" && parts[4] == f.ns && parts[5] == "daemonsets":
		parts = parts[5:]
	default:
		return "", "", "", false
	}
	resource = parts[0]
	if len(parts) > 1 {
		name = parts[1]
	}
	switch {
	case r.Method == http.MethodGet && name != "":
		verb = "get"
	case r.Method == http.MethodGet && r.URL.Query().Get("watch") == "true":
		verb = "watch"
	case r.Method == http.MethodGet:
		verb = "list"
	case r.Method == http.MethodPost && name == "":
		verb = "create"
	case r.Method == http.MethodDelete && name != "":
		verb = "delete"
	case r.Method == http.MethodDelete:
		verb = "deletecollection"
	default:
		return "", "", "", false
	}
	return verb, resource, name, true
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	if f.echo {
		writeStatus(w, 500, "InternalError", "upstream said no to "+r.Header.Get("Authorization"))
		return
	}
	if !f.authorized(r) {
		writeStatus(w, 401, "Unauthorized", "Unauthorized")
		return
	}
	verb, resource, name, ok := f.route(r)
	if !ok {
		writeStatus(w, 404, "NotFound", "the server could not find the requested resource: "+r.Method+" "+r.URL.Path)
		return
	}
	req := verb + " " + resource
	f.mu.Lock()
	f.requests = append(f.requests, req)
	fault := f.fault
	f.mu.Unlock()
	if !allowed(verb, resource, resource != "nodes") {
		writeStatus(w, 403, "Forbidden", fmt.Sprintf(`%s is forbidden: User "ci" cannot %s resource "%s" in API group "" in the namespace "%s"`, resource, verb, resource, f.ns))
		return
	}
	code, keep := 0, false
	if fault != nil {
		code, keep = fault(req)
	}
	if code != 0 && !keep {
		writeStatus(w, code, http.StatusText(code), "injected: "+req)
		return
	}
	sel := r.URL.Query().Get("labelSelector")
	switch verb {
	case "list":
		f.list(w, resource, sel)
	case "watch":
		f.watch(w, r, sel)
	case "create":
		var o obj
		if err := json.NewDecoder(r.Body).Decode(&o); err != nil {
			writeStatus(w, 400, "BadRequest", err.Error())
			return
		}
		f.create(resource, o)
		if code != 0 {
			writeStatus(w, code, http.StatusText(code), "injected after storing: "+req)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(o)
	case "delete":
		var opts struct {
			GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
			PropagationPolicy  string `json:"propagationPolicy"`
		}
		if err := json.NewDecoder(r.Body).Decode(&opts); err != nil || opts.GracePeriodSeconds == nil || *opts.GracePeriodSeconds != 0 || opts.PropagationPolicy != "Background" {
			f.t.Errorf("delete %s/%s: options %+v (%v), want grace 0 and Background propagation", resource, name, opts, err)
		}
		f.mu.Lock()
		_, found := f.objects[resource][name]
		delete(f.objects[resource], name)
		if resource == "daemonsets" { // the garbage collector
			for n, p := range f.objects["pods"] {
				if p["metadata"].(obj)["labels"].(obj)[RunLabel] == strings.TrimPrefix(name, "ghcr-pull-") {
					delete(f.objects["pods"], n)
				}
			}
		}
		f.mu.Unlock()
		if !found {
			writeStatus(w, 404, "NotFound", resource+" "+name+" not found")
			return
		}
		writeStatus(w, 200, "", "")
	default:
		writeStatus(w, 405, "MethodNotAllowed", req)
	}
}

// labelled: the fake's selectors are always key=value.
func labelled(o obj, sel string) bool {
	if sel == "" {
		return true
	}
	k, v, _ := strings.Cut(sel, "=")
	labels, _ := o["metadata"].(obj)["labels"].(obj)
	return labels[k] == v
}

func (f *fakeAPI) list(w http.ResponseWriter, resource, sel string) {
	f.mu.Lock()
	items := []obj{}
	if resource == "nodes" {
		items = append(items, f.nodes...)
	}
	for _, o := range f.objects[resource] {
		if labelled(o, sel) {
			items = append(items, o)
		}
	}
	f.rv++
	rv := f.rv
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(obj{"kind": "List", "metadata": obj{"resourceVersion": fmt.Sprint(rv)}, "items": items})
}

func (f *fakeAPI) create(resource string, o obj) {
	f.mu.Lock()
	defer f.mu.Unlock()
	md := o["metadata"].(map[string]any)
	name := md["name"].(string)
	f.objects[resource][name] = o
	f.posted[resource] = o
	if resource != "daemonsets" {
		return
	}
	// The DaemonSet controller: one pending pod per pinned node.
	spec := o["spec"].(obj)["template"].(obj)
	values := spec["spec"].(obj)["affinity"].(obj)["nodeAffinity"].(obj)["requiredDuringSchedulingIgnoredDuringExecution"].(obj)["nodeSelectorTerms"].([]any)[0].(obj)["matchFields"].([]any)[0].(obj)["values"].([]any)
	for _, v := range values {
		n := v.(string)
		f.rv++
		f.objects["pods"][name+"-"+n] = obj{
			"metadata": obj{"name": name + "-" + n, "labels": spec["metadata"].(obj)["labels"], "resourceVersion": fmt.Sprint(f.rv)},
			"spec":     obj{"nodeName": n},
			"status":   obj{"initContainerStatuses": []obj{{"name": "pull", "state": obj{"waiting": obj{"reason": "PodInitializing"}}}}},
		}
	}
}

func (f *fakeAPI) watch(w http.ResponseWriter, r *http.Request, sel string) {
	f.mu.Lock()
	f.watches++
	end := f.watches <= f.endWatch
	var events []obj
	for _, p := range f.objects["pods"] {
		if !labelled(p, sel) {
			continue
		}
		node := p["spec"].(obj)["nodeName"].(string)
		f.rv++
		next := obj{"metadata": obj{"name": p["metadata"].(obj)["name"], "labels": p["metadata"].(obj)["labels"], "resourceVersion": fmt.Sprint(f.rv)},
			"spec": p["spec"], "status": obj{"initContainerStatuses": []obj{f.status(node)}}}
		f.objects["pods"][p["metadata"].(obj)["name"].(string)] = next
		events = append(events, obj{"type": "MODIFIED", "object": next})
	}
	hold := f.holdWatch
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	if end {
		return
	}
	enc := json.NewEncoder(w)
	for _, ev := range events {
		_ = enc.Encode(ev)
	}
	if f.watchError {
		_ = enc.Encode(obj{"type": "ERROR", "object": obj{"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}})
	}
	w.(http.Flusher).Flush()
	if hold {
		<-r.Context().Done()
	}
}
