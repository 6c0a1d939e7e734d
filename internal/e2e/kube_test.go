package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
	"github.com/ghcr-pull/ghcr-pull/internal/kube"
)

// kubeLeftovers lists every object of ghcr-pull's in the cluster.
func kubeLeftovers(t *testing.T, c *Cluster) []string {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: kube.ManagedByLabel + "=" + kube.ManagedBy}
	var left []string
	ds, err := c.Client.AppsV1().DaemonSets("").List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ds.Items {
		left = append(left, "daemonset/"+o.Name)
	}
	pods, _ := c.Client.CoreV1().Pods("").List(ctx, sel)
	for _, o := range pods.Items {
		left = append(left, "pod/"+o.Name)
	}
	secrets, _ := c.Client.CoreV1().Secrets("").List(ctx, sel)
	for _, o := range secrets.Items {
		left = append(left, "secret/"+o.Name)
	}
	return left
}

// scanForSecret fails when secret appears in any API object of the
// namespace (as JSON) or in any file under the node's directories.
func scanForSecret(t *testing.T, c *Cluster, secret string) {
	t.Helper()
	ctx := context.Background()
	secrets, _ := c.Client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	for _, s := range secrets.Items {
		for k, v := range s.Data {
			if strings.Contains(string(v), secret) {
				t.Errorf("secret %s/%s key %s holds the credential", s.Namespace, s.Name, k)
			}
		}
	}
	for _, dir := range []string{filepath.Join(c.Dir, "kubelet"), filepath.Join(c.Dir, "pod-logs"), filepath.Join(c.Dir, "containerd", "root"), filepath.Join(c.Dir, "containerd", "state")} {
		_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err != nil || !info.Mode().IsRegular() || info.Size() > 8<<20 {
				return nil
			}
			if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), secret) {
				t.Errorf("node file %s holds the credential", p)
			}
			return nil
		})
	}
}

func TestKubePrepull(t *testing.T) {
	c := StartCluster(t)
	e := Start(t)
	t.Logf("cluster up in %s (binaries built in %s)", c.Started.Round(time.Millisecond), kubeTools.took.Round(time.Second))
	password := "kube-" + canary
	e.Front.AddUser("kdeployer", password, false, "acme/kube-private")
	privDigest := pushNodeImage(t, e, "acme/kube-private", "1", 256<<10, 3)
	pubDigest := pushNodeImage(t, e, "acme/kube-public", "1", 256<<10, 2)
	e.Front.SetPublic("acme/kube-public")
	cfg, err := kube.ParseConfig(c.Kubeconfig(c.AdminToken), "", "default", "", 40*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	auth := &kube.PullAuth{Registry: e.Host, Username: "kdeployer", Password: password}
	ctx := context.Background()

	// A second Node object that never becomes ready, beside the real one.
	ghost := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "e2e-ghost", Labels: map[string]string{"pool": "ghost"}}}
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, ghost, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), ghost.Name, metav1.DeleteOptions{}) })

	t.Run("private image with good credentials on the ready node; the ghost node fails beside it", func(t *testing.T) {
		res, err := kube.Prepull(ctx, cfg, e.Host+"/acme/kube-private@"+privDigest, auth, nil)
		if err != nil {
			t.Fatalf("prepull: %v\nkubelet: %s", err, lastLinesOf(c.log("kubelet"), 10))
		}
		if len(res.Nodes) != 2 {
			t.Fatalf("nodes = %+v", res.Nodes)
		}
		ghostRes, real := res.Nodes[0], res.Nodes[1]
		if real.Node != c.Node || real.Err != nil || real.Digest != privDigest || !strings.HasPrefix(real.ImageID, e.Host+"/acme/kube-private@") {
			t.Errorf("real node = %+v (want digest %s)\nkubelet: %s\ncontainerd: %s", real, privDigest, lastLinesOf(errorLines(c.log("kubelet")), 15), lastLinesOf(c.log("containerd"), 15))
		}
		var ne *kube.NodeError
		if ghostRes.Node != "e2e-ghost" || !errors.As(ghostRes.Err, &ne) || ne.Kind != kube.NotReady || ne.Reason == "" || failure.ClassOf(ghostRes.Err) != "transient" {
			t.Errorf("ghost node = %+v", ghostRes)
		}
		t.Logf("real node %s in %s, %d API calls", real.Digest, real.Duration.Round(time.Millisecond), res.APICalls)
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
		scanForSecret(t, c, password)
	})

	t.Run("rejected credentials on a public image", func(t *testing.T) {
		bad := &kube.PullAuth{Registry: e.Host, Username: "kdeployer", Password: "wrong-" + canary}
		res, err := kube.Prepull(ctx, cfg, e.Host+"/acme/kube-public@"+pubDigest, bad, []string{c.Node})
		if err != nil {
			t.Fatal(err)
		}
		var rej *failure.Rejected
		if len(res.Nodes) != 1 || !errors.As(res.Nodes[0].Err, &rej) {
			t.Fatalf("want a rejection, got %+v", res.Nodes)
		}
		t.Logf("rejection: %v", res.Nodes[0].Err)
		res, err = kube.Prepull(ctx, cfg, e.Host+"/acme/kube-public@"+pubDigest, nil, []string{c.Node})
		if err != nil || len(res.Nodes) != 1 || res.Nodes[0].Err != nil || res.Nodes[0].Digest != pubDigest {
			t.Fatalf("anonymous: %v %+v", err, res.Nodes)
		}
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
		scanForSecret(t, c, "wrong-"+canary)
	})

	t.Run("not found", func(t *testing.T) {
		res, err := kube.Prepull(ctx, cfg, e.Host+"/acme/kube-private:missing", auth, []string{c.Node})
		if err != nil {
			t.Fatal(err)
		}
		var nf *failure.NotFound
		if len(res.Nodes) != 1 || !errors.As(res.Nodes[0].Err, &nf) {
			t.Fatalf("want not found, got %+v", res.Nodes)
		}
		t.Logf("not found: %v", res.Nodes[0].Err)
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	t.Run("a node selector matching no node", func(t *testing.T) {
		cfg, err := kube.ParseConfig(c.Kubeconfig(c.AdminToken), "", "default", "pool=nowhere", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		_, err = kube.Prepull(ctx, cfg, e.Host+"/acme/kube-public@"+pubDigest, nil, nil)
		var bi *failure.BadInput
		if !errors.As(err, &bi) || bi.Input != "Selector" {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("timeout: everything cleaned up", func(t *testing.T) {
		cfg, err := kube.ParseConfig(c.Kubeconfig(c.AdminToken), "", "default", "", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// A registry that stalls the manifest past the bound.
		e.Front.Inject(ghcrsim.Fault{Match: "/acme/kube-slow/manifests/", Stall: 8 * time.Second})
		res, err := kube.Prepull(ctx, cfg, e.Host+"/acme/kube-slow:1", auth, []string{c.Node})
		if err != nil {
			t.Fatal(err)
		}
		var ne *kube.NodeError
		if len(res.Nodes) != 1 || !errors.As(res.Nodes[0].Err, &ne) || ne.Kind != kube.TimedOut || ne.Reason == "" {
			t.Fatalf("want a timeout, got %+v", res.Nodes)
		}
		t.Logf("timeout: %v", res.Nodes[0].Err)
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}
