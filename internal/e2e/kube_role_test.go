package e2e

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/kube"
)

// TestKubeDocumentedRole runs the pre-pull as an identity bound to exactly
// the role docs/kubernetes.md documents (kube.Permissions), on the real
// cluster with RBAC authorization: the pre-pull and its clean-up work and
// leave nothing. Then, with delete on secrets taken away, the clean-up's
// refusal is reported naming the verb and the resource.
func TestKubeDocumentedRole(t *testing.T) {
	c := StartCluster(t)
	e := Start(t)
	ctx := context.Background()
	password := "krole-" + canary
	e.Front.AddUser("krole", password, false, "acme/kube-role")
	digest := pushNodeImage(t, e, "acme/kube-role", "1", 256<<10, 2)
	const ns = "prepull-role"
	admin := c.Client

	subject := rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: DeployerUser}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: documentedRole(t, c, ns, subject), Namespace: ns}}
	// allowed asks the authorizer what the deployer may do, and waits until
	// it answers want (RBAC reads the objects through an informer).
	allowed := func(t *testing.T, verb, group, resource string, want bool) {
		t.Helper()
		var got bool
		err := waitUntil(10*time.Second, 100*time.Millisecond, func() (bool, error) {
			sar, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: DeployerUser, ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: group, Resource: resource}}}, metav1.CreateOptions{})
			if err != nil {
				return false, err
			}
			got = sar.Status.Allowed
			return got == want, nil
		})
		if err != nil {
			t.Fatalf("%s %s for %s: allowed=%v, want %v (%v)", verb, resource, DeployerUser, got, want, err)
		}
	}
	allowed(t, "create", "apps", "daemonsets", true)
	allowed(t, "delete", "", "secrets", true)
	// Exactly the role: what the old clean-up used is refused.
	allowed(t, "deletecollection", "", "pods", false)
	allowed(t, "delete", "", "pods", false)
	allowed(t, "get", "", "secrets", false)

	kubeconfig := strings.Replace(c.Kubeconfig(c.DeployerToken), "user: admin}", "user: admin, namespace: "+ns+"}", 1)
	cfg, err := kube.ParseConfig(kubeconfig, "", "", "kubernetes.io/hostname="+c.Node, 40*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Namespace != ns {
		t.Fatalf("namespace %q", cfg.Namespace)
	}
	auth := &kube.PullAuth{Registry: e.Host, Username: "krole", Password: password}
	// A client as the deployer, to prove it really has no more than that.
	rc, err := clientcmd.RESTConfigFromKubeConfig([]byte(kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	deployer, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("pre-pull and clean-up with exactly the documented verbs", func(t *testing.T) {
		if err := deployer.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err == nil {
			t.Fatalf("the deployer may deletecollection pods: the role is wider than documented")
		}
		res, err := kube.Prepull(ctx, cfg, e.Host+"/acme/kube-role@"+digest, auth, nil)
		if err != nil {
			t.Fatalf("prepull as %s: %v\nkubelet: %s", DeployerUser, err, lastLinesOf(errorLines(c.log("kubelet")), 10))
		}
		if len(res.Nodes) != 1 || res.Nodes[0].Err != nil || res.Nodes[0].Digest != digest {
			t.Fatalf("nodes = %+v, want %s on %s", res.Nodes, digest, c.Node)
		}
		t.Logf("as %s: %s in %s, %d API calls", DeployerUser, res.Nodes[0].Digest, res.Nodes[0].Duration.Round(time.Millisecond), res.APICalls)
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
		scanForSecret(t, c, password)
	})

	// setVerbs grants resource exactly verbs in the Role, and waits until
	// the authorizer says so.
	setVerbs := func(t *testing.T, resource string, verbs ...string) {
		t.Helper()
		r, err := admin.RbacV1().Roles(ns).Get(ctx, role.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		group := ""
		for i := range r.Rules {
			if r.Rules[i].Resources[0] == resource {
				r.Rules[i].Verbs, group = verbs, r.Rules[i].APIGroups[0]
			}
		}
		if _, err := admin.RbacV1().Roles(ns).Update(ctx, r, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"create", "delete"} {
			allowed(t, v, group, resource, slices.Contains(verbs, v))
		}
	}

	t.Run("create on daemonsets withheld: refused after the Secret exists, the Secret deleted", func(t *testing.T) {
		setVerbs(t, "daemonsets", "list", "delete")
		defer setVerbs(t, "daemonsets", "create", "list", "delete")
		_, err := kube.Prepull(ctx, cfg, e.Host+"/acme/kube-role@"+digest, auth, nil)
		var bi *failure.BadInput
		if !errors.As(err, &bi) || bi.Input != "kubeconfig" || !strings.Contains(err.Error(), "creating the pre-pull DaemonSet") || !strings.Contains(bi.Fix, "create/list/delete on daemonsets") {
			t.Fatalf("err = %v, want bad input kubeconfig naming the DaemonSet and the role", err)
		}
		t.Logf("refused: %v", err)
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
		scanForSecret(t, c, password)
	})

	t.Run("delete on secrets withheld: the clean-up failure names verb and resource", func(t *testing.T) {
		setVerbs(t, "secrets", "create", "list")
		defer setVerbs(t, "secrets", "create", "list", "delete")
		res, err := kube.Prepull(ctx, cfg, e.Host+"/acme/kube-role@"+digest, auth, nil)
		var ce *kube.CleanupError
		if !errors.As(err, &ce) || ce.Verb != "delete" || ce.Resource != "secrets" || ce.Namespace != ns || !strings.HasPrefix(ce.Name, "ghcr-pull-") {
			t.Fatalf("err = %v, want a clean-up error naming delete secrets", err)
		}
		if !strings.Contains(err.Error(), "kubectl delete -n "+ns) || len(res.Nodes) != 1 || res.Nodes[0].Err != nil {
			t.Errorf("err = %v, nodes %+v", err, res.Nodes)
		}
		t.Logf("reported: %v", err)
		// What was refused is left, and only that: the test removes it.
		left := kubeLeftovers(t, c)
		if len(left) != 1 || left[0] != "secret/"+ce.Name {
			t.Errorf("left = %v, want the Secret only", left)
		}
		if err := admin.CoreV1().Secrets(ns).Delete(ctx, ce.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})
}

// documentedRole makes namespace ns (waiting for its default
// ServiceAccount, which pods need) and binds subjects to exactly the
// documented role (kube.Permissions): a ClusterRole for the cluster-wide
// lines, a Role in ns for the rest. It returns the Role's name; all goes
// when the test ends.
func documentedRole(t testing.TB, c *Cluster, ns string, subjects ...rbacv1.Subject) string {
	t.Helper()
	ctx := context.Background()
	admin := c.Client
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	if err := waitUntil(30*time.Second, 100*time.Millisecond, func() (bool, error) {
		_, err := admin.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("no default ServiceAccount in %s: %v", ns, err)
	}
	var cluster, namespaced []rbacv1.PolicyRule
	for _, p := range kube.Permissions {
		r := rbacv1.PolicyRule{APIGroups: []string{p.Group}, Resources: []string{p.Resource}, Verbs: p.Verbs}
		if p.Namespaced {
			namespaced = append(namespaced, r)
		} else {
			cluster = append(cluster, r)
		}
	}
	crName := "ghcr-pull-e2e-nodes-" + ns
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: crName}, Rules: cluster}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.RbacV1().ClusterRoles().Delete(context.Background(), crName, metav1.DeleteOptions{}) })
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: crName}, Subjects: subjects,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: crName}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = admin.RbacV1().ClusterRoleBindings().Delete(context.Background(), crName, metav1.DeleteOptions{})
	})
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "ghcr-pull", Namespace: ns}, Rules: namespaced}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "ghcr-pull", Namespace: ns}, Subjects: subjects,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "ghcr-pull"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return role.Name
}
