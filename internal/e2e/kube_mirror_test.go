package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/action"
	"github.com/ghcr-pull/ghcr-pull/internal/cri"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// allowPlainHTTP has the cluster's containerd reach host over plain HTTP
// (a hosts.toml under its config_path, read at each pull), until the test
// ends.
func (c *Cluster) allowPlainHTTP(t *testing.T, host string) {
	t.Helper()
	dir := filepath.Join(c.Dir, "containerd", "certs.d", host)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+host, "http://"+host)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
}

// nodeNames lists the names the node's CRI image service gives the image
// ref names (its RepoTags and RepoDigests), nil when it has none.
func (c *Cluster) nodeNames(t *testing.T, ref string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := cri.New(ctx, func(ctx context.Context) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", c.sock)
	}, nil)
	if err != nil {
		t.Fatalf("the node's CRI: %v", err)
	}
	defer d.Close()
	info, err := d.Inspect(ctx, ref)
	if err != nil {
		return nil
	}
	var names []string
	for _, rd := range info.RepoDigests {
		names = append(names, rd.String())
	}
	return names
}

// ofRepo keeps the requests about repo (its manifests and blobs, tokens
// scoped to it): the node also pulls the sandbox (pause) image from the
// suite's registry.
func ofRepo(reqs []ghcrsim.Request, repo string) []ghcrsim.Request {
	var out []ghcrsim.Request
	for _, r := range reqs {
		if strings.HasPrefix(r.Path, "/v2/"+repo+"/") || strings.Contains(r.Scope, "repository:"+repo+":") {
			out = append(out, r)
		}
	}
	return out
}

// TestKubeMirror: the cluster destination with a mirror that serves the
// digest. The pre-pull DaemonSet pulls <mirror>/<repo>@<digest> with the
// mirror's own credentials (the upstream password reaches neither the
// mirror's front nor any object or file of the cluster), and upstream's
// front sees no request from the node. The kubelet names the image by the
// mirror's reference, so the claim that makes this worth doing is checked
// too: a pod of the user's tag, pulled by the kubelet afterwards, finds
// every blob in containerd's content store (keyed by digest) and asks
// upstream only to resolve the tag: no manifest GET, no blob.
func TestKubeMirror(t *testing.T) {
	c := StartCluster(t)
	e := Start(t)
	t.Cleanup(e.Front.ResetLog)
	const repo = "acme/kube-mirror"
	const mirrorSecret = "kube-mirror-secret-5b1e"
	password := "kubemirror-" + canary
	e.Front.AddUser("kmirror", password, false, repo)
	digest := pushNodeImage(t, e, repo, "1", 256<<10, 3)
	e.Front.SetPublic(repo) // the later pod pulls anonymously
	img, err := remote.Image(mustRef(t, e.Host+"/"+repo+":1"), remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}))
	if err != nil {
		t.Fatal(err)
	}
	m := e.startMirror(t)
	e.pushTo(t, m.host, repo+":1", img)
	m.front.AddUser("mirror-user", mirrorSecret, false, repo)
	c.allowPlainHTTP(t, m.host)
	m.front.ResetLog()
	e.Front.ResetLog()

	res := e.RunAction(t, map[string]string{
		"image": e.Host + "/" + repo + ":1", "username": "kmirror", "password": password,
		"mirrors": e.Host + "=http://" + m.host, "mirror-username": "mirror-user", "mirror-password": mirrorSecret,
		"destination": "kubernetes", "kubeconfig": c.Kubeconfig(c.AdminToken), "kube-timeout": "60s",
		"kube-node-selector": "kubernetes.io/hostname=" + c.Node,
	})
	if res.ExitCode != 0 {
		t.Fatalf("exit %d\n%s\nkubelet: %s", res.ExitCode, res.Stdout, lastLinesOf(errorLines(c.log("kubelet")), 10))
	}
	var rs []action.ResultJSON
	if err := json.Unmarshal([]byte(res.Outputs["results"]), &rs); err != nil || len(rs) != 1 {
		t.Fatalf("results %q: %v", res.Outputs["results"], err)
	}
	if r := rs[0]; r.Host != c.Node || r.ServedBy != m.host || r.Digest != digest || r.ImageRef != e.Host+"/"+repo+"@"+digest {
		t.Errorf("result %+v", r)
	}
	upAll, upBlobs := fromRuntime(ofRepo(e.Front.Requests(), repo))
	mAll, mBlobs := fromRuntime(m.front.Requests())
	t.Logf("pre-pull: upstream %d requests for %s (%d from the node, %d blobs); mirror %d from the node (%d blobs)", len(ofRepo(e.Front.Requests(), repo)), repo, upAll, upBlobs, mAll, mBlobs)
	if upAll != 0 || mBlobs == 0 {
		t.Errorf("the node asked upstream %d times and the mirror for %d blobs; want the mirror only", upAll, mBlobs)
	}
	for _, q := range m.front.Requests() {
		if q.BasicPassword == password || q.BasicUser == "kmirror" || (q.BasicUser != "" && q.BasicUser != "mirror-user") {
			t.Errorf("the mirror's front received credentials of %q (%s %s)", q.BasicUser, q.Method, q.Path)
		}
	}
	names := c.nodeNames(t, m.host+"/"+repo+"@"+digest)
	t.Logf("the node names the image %v", names)
	if left := kubeLeftovers(t, c); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	scanForSecret(t, c, password)
	scanForSecret(t, c, mirrorSecret)
	assertNoSecretLeak(t, res, password)
	assertNoSecretLeak(t, res, mirrorSecret)

	// A pod of the user's tag afterwards: the kubelet lacks that name and
	// pulls it, upstream, anonymously.
	e.Front.ResetLog()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-kube-mirror-user"},
		Spec: corev1.PodSpec{
			HostNetwork: true, RestartPolicy: corev1.RestartPolicyNever, NodeName: c.Node,
			TerminationGracePeriodSeconds: new(int64), AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "app", Image: e.Host + "/" + repo + ":1", ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"/.does-not-exist"}}},
		},
	}
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Client.CoreV1().Pods("default").Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		_ = waitUntil(60*time.Second, 200*time.Millisecond, func() (bool, error) {
			_, err := c.Client.CoreV1().Pods("default").Get(context.Background(), pod.Name, metav1.GetOptions{})
			return err != nil, nil
		})
	})
	// Pulled once the kubelet got past the image: the container then
	// fails to start (its command does not exist).
	var state string
	err = waitUntil(90*time.Second, 250*time.Millisecond, func() (bool, error) {
		p, err := c.Client.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false, nil
		}
		st := p.Status.ContainerStatuses[0].State
		switch {
		case st.Terminated != nil:
			state = "terminated: " + st.Terminated.Reason
			return true, nil
		case st.Waiting != nil && st.Waiting.Reason != "ContainerCreating" && st.Waiting.Reason != "" && !strings.Contains(st.Waiting.Reason, "Pull"):
			state = "waiting: " + st.Waiting.Reason
			return true, nil
		case st.Waiting != nil && strings.Contains(st.Waiting.Reason, "Pull"):
			return false, fmt.Errorf("the kubelet could not pull: %s", st.Waiting.Message)
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the pod: %v\nkubelet: %s", err, lastLinesOf(errorLines(c.log("kubelet")), 10))
	}
	var gets, heads int
	for _, q := range ofRepo(e.Front.Requests(), repo) {
		if strings.Contains(q.Path, "/manifests/") {
			if q.Method == "GET" {
				gets++
			} else {
				heads++
			}
		}
	}
	podAll, podBlobs := fromRuntime(ofRepo(e.Front.Requests(), repo))
	t.Logf("the pod's pull of the user's tag (%s): upstream %d requests from the node: %d manifest HEAD, %d manifest GET, %d blobs", state, podAll, heads, gets, podBlobs)
	if podBlobs != 0 || gets != 0 {
		t.Errorf("the pod's pull fetched %d manifests and %d blobs upstream; the pre-pull from the mirror should have left them all", gets, podBlobs)
	}
	if !contains(c.nodeNames(t, e.Host+"/"+repo+":1"), e.Host+"/"+repo+"@"+digest) {
		t.Errorf("after the pod's pull the node lacks %s@%s", e.Host+"/"+repo, digest)
	}
}
