package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/action"
)

// TestKubeThroughTheAction runs destination kubernetes through the binary
// as a workflow would: one results entry and one summary row per node,
// the pull Secret gone afterwards, the kubeconfig's token and the password
// in no output, object or node file.
func TestKubeThroughTheAction(t *testing.T) {
	c := StartCluster(t)
	e := Start(t)
	password := "kubeaction-" + canary
	e.Front.AddUser("kaction", password, false, "acme/kube-action")
	privDigest := pushNodeImage(t, e, "acme/kube-action", "1", 256<<10, 2)
	pubDigest := pushNodeImage(t, e, "acme/kube-action-public", "1", 256<<10, 2)
	e.Front.SetPublic("acme/kube-action-public")
	ghost := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "e2e-ghost-action"}}
	if _, err := c.Client.CoreV1().Nodes().Create(context.Background(), ghost, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), ghost.Name, metav1.DeleteOptions{}) })
	kubeconfig := c.Kubeconfig(c.AdminToken)
	results := func(t *testing.T, res Result) map[string]action.ResultJSON {
		t.Helper()
		var rs []action.ResultJSON
		if err := json.Unmarshal([]byte(res.Outputs["results"]), &rs); err != nil {
			t.Fatalf("results %q: %v\n%s", res.Outputs["results"], err, res.Stdout)
		}
		byHost := map[string]action.ResultJSON{}
		for _, r := range rs {
			byHost[r.Host] = r
		}
		return byHost
	}

	t.Run("every node: the ready one has the image, the ghost fails beside it", func(t *testing.T) {
		res := e.RunAction(t, map[string]string{
			"image": e.Host + "/acme/kube-action:1", "username": "kaction", "password": password,
			"destination": "kubernetes", "kubeconfig": kubeconfig, "kube-timeout": "60s",
		})
		if res.ExitCode != 1 {
			t.Fatalf("exit %d, want 1 (the ghost node fails)\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		real, ghostRes := rs[c.Node], rs[ghost.Name]
		if len(rs) != 2 || real.Runtime != "kubernetes" || real.Error != "" || real.Digest != privDigest || real.AuthMode != "token" {
			t.Errorf("real node %+v (want digest %s)\nall: %+v\n%s", real, privDigest, rs, res.Stdout)
		}
		if ghostRes.Error == "" || ghostRes.ErrorClass != "transient" || ghostRes.Digest != "" || !strings.Contains(ghostRes.Error, "not") {
			t.Errorf("ghost node %+v", ghostRes)
		}
		for _, node := range []string{c.Node, ghost.Name} {
			if !strings.Contains(res.Summary, node) {
				t.Errorf("the summary has no row for %s:\n%s", node, res.Summary)
			}
		}
		assertNoSecretLeak(t, res, password)
		// The kubeconfig is masked whole (and per line, and in its escaped
		// forms) before the token alone: those ::add-mask:: lines hold the
		// token by design, and the runner never prints them.
		masked := res
		var kept []string
		for _, l := range strings.Split(res.Stdout, "\n") {
			if !strings.HasPrefix(l, "::add-mask::") {
				kept = append(kept, l)
			}
		}
		masked.Stdout = strings.Join(kept, "\n")
		assertNoSecretLeak(t, masked, c.AdminToken)
		if !strings.Contains(res.Stdout, "::add-mask::"+c.AdminToken+"\n") {
			t.Errorf("the kubeconfig's token is not masked on its own")
		}
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
		scanForSecret(t, c, password)
	})

	t.Run("rejected credentials on a public image: anonymous, no Secret", func(t *testing.T) {
		res := e.RunAction(t, map[string]string{
			"image": e.Host + "/acme/kube-action-public:1", "username": "kaction", "password": "wrong-" + canary,
			"destination": "kubernetes", "kubeconfig": kubeconfig, "kube-timeout": "60s",
			"kube-node-selector": "kubernetes.io/hostname=" + c.Node,
		})
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		real := rs[c.Node]
		if len(rs) != 1 || real.Digest != pubDigest || real.AuthMode != "anonymous" || !real.FallbackUsed || res.Outputs["fallback-used"] != "true" {
			t.Errorf("results %+v", rs)
		}
		assertNoSecretLeak(t, res, "wrong-"+canary)
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
		scanForSecret(t, c, "wrong-"+canary)
	})

	t.Run("a selector that matches no node", func(t *testing.T) {
		res := e.RunAction(t, map[string]string{
			"image": e.Host + "/acme/kube-action-public:1", "auth": "anonymous",
			"destination": "kubernetes", "kubeconfig": kubeconfig, "kube-node-selector": "pool=nowhere",
		})
		if res.ExitCode == 0 || !strings.Contains(res.Stdout, "kube-node-selector") {
			t.Errorf("exit %d, want a failure naming kube-node-selector\n%s", res.ExitCode, res.Stdout)
		}
	})
}
