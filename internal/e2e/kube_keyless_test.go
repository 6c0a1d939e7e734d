package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc/oidctest"
)

// TestKubeKeyless runs kube-auth eks and oidc through the binary against
// the suite's cluster, whose API server verifies EKS tokens through a
// webhook (as aws-iam-authenticator, against the SigV4-checking STS fake)
// and the fake Actions issuer's ID tokens through structured JWT
// authentication. The identities are bound to exactly the documented role.
func TestKubeKeyless(t *testing.T) {
	c := StartCluster(t)
	e := Start(t)
	k := c.Keyless
	const ns = "prepull-keyless"
	const role = keylessRole
	ca, err := os.ReadFile(filepath.Join(c.Dir, "pki", "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	forms := keylessForms(t, c, ns, c.Server, ca)
	digest := pushNodeImage(t, e, "acme/kube-keyless", "1", 256<<10, 2)
	e.Front.SetPublic("acme/kube-keyless")
	awsEnv := k.CloudEnv()
	inputs := func(image string, kv ...string) map[string]string {
		m := map[string]string{"image": e.Host + "/" + image, "auth": "anonymous", "destination": "kubernetes",
			"kube-namespace": ns, "kube-timeout": "60s", "kube-node-selector": "kubernetes.io/hostname=" + c.Node}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	eks, oidcForm := forms["eks"], forms["oidc"]

	// tokensSafe: every token of the run was masked, and none is in the
	// outputs, the summary, the log (its ::add-mask:: lines aside), the
	// run's files, any API object or node file.
	tokensSafe := func(t *testing.T, res Result, tokens []string) {
		t.Helper()
		if len(tokens) == 0 {
			t.Fatalf("no token was used")
		}
		for _, tok := range tokens {
			if !strings.Contains(res.Stdout, "::add-mask::"+tok+"\n") {
				t.Errorf("a token was not masked before use")
			}
			assertNoSecretLeak(t, res, tok)
			scanForSecret(t, c, tok)
		}
		if left := kubeLeftovers(t, c); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	}
	prepulled := func(t *testing.T, res Result, want string) {
		t.Helper()
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		if len(rs) != 1 || rs[0]["host"] != c.Node || rs[0]["digest"] != want || rs[0]["runtime"] != "kubernetes" {
			t.Errorf("results %v, want %s on %s", rs, want, c.Node)
		}
	}
	since := func(before []string, now []string) []string { return now[len(before):] }

	t.Run("eks: endpoint and CA from DescribeCluster, the image on the node", func(t *testing.T) {
		seen, issued := k.Seen(), k.Issuer.Issued()
		res := e.RunAction(t, inputs("acme/kube-keyless:1", eks...), awsEnv...)
		prepulled(t, res, digest)
		tokens := since(seen, k.Seen())
		tokensSafe(t, res, append(tokens, since(issued, k.Issuer.Issued())...))
		if !strings.Contains(strings.Join(k.AWS.Calls, ","), "eks:DescribeCluster") {
			t.Errorf("AWS calls %v: no DescribeCluster", k.AWS.Calls)
		}
		t.Logf("%d EKS token reviews for one run", len(tokens))
	})

	for _, cloud := range []struct {
		name   string
		inputs []string
	}{
		{"gke: a Google token impersonating the service account, endpoint from the Container API", forms["gke"]},
		{"aks: an Entra token by client assertion, endpoint from listClusterUserCredential", forms["aks"]},
	} {
		t.Run(cloud.name, func(t *testing.T) {
			seen, issued := k.Seen(), k.Issuer.Issued()
			res := e.RunAction(t, inputs("acme/kube-keyless:1", cloud.inputs...), awsEnv...)
			prepulled(t, res, digest)
			tokens := since(seen, k.Seen())
			tokensSafe(t, res, append(tokens, since(issued, k.Issuer.Issued())...))
			if len(tokens) == 0 {
				t.Errorf("the webhook reviewed no token of the cloud")
			}
		})
	}

	t.Run("aks without create on daemonsets: refused, the verb and resource named", func(t *testing.T) {
		const ns2 = "prepull-keyless-nocreate"
		ctx := context.Background()
		name := documentedRole(t, c, ns2, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: keylessAKSClient})
		r, err := c.Client.RbacV1().Roles(ns2).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range r.Rules {
			if r.Rules[i].Resources[0] == "daemonsets" {
				r.Rules[i].Verbs = []string{"list", "delete"}
			}
		}
		if _, err := c.Client.RbacV1().Roles(ns2).Update(ctx, r, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := waitUntil(10*time.Second, 100*time.Millisecond, func() (bool, error) {
			sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User: keylessAKSClient, ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns2, Verb: "list", Group: "apps", Resource: "daemonsets"}}}, metav1.CreateOptions{})
			return err == nil && sar.Status.Allowed, err
		}); err != nil {
			t.Fatal(err)
		}
		seen := k.Seen()
		res := e.RunAction(t, inputs("acme/kube-keyless:1", append([]string{"kube-namespace", ns2}, forms["aks"]...)...), awsEnv...)
		if res.ExitCode == 0 || !badKubeAuth(t, res) || !strings.Contains(res.Stdout, "creating the pre-pull DaemonSet") ||
			!strings.Contains(res.Stdout, `cannot create resource \"daemonsets\"`) && !strings.Contains(res.Stdout, `cannot create resource "daemonsets"`) {
			t.Errorf("exit %d, want a failure naming create on daemonsets\n%s", res.ExitCode, res.Stdout)
		}
		tokensSafe(t, res, since(seen, k.Seen()))
	})

	t.Run("oidc: the ID token with the API server's audience", func(t *testing.T) {
		issued := k.Issuer.Issued()
		res := e.RunAction(t, inputs("acme/kube-keyless:1", oidcForm...), k.Issuer.Env()...)
		prepulled(t, res, digest)
		tokens := since(issued, k.Issuer.Issued())
		tokensSafe(t, res, tokens)
		for _, tok := range tokens {
			if !strings.Contains(jwtClaims(tok), `"aud":"`+KubeAudience+`"`) {
				t.Errorf("an ID token for another audience: %s", jwtClaims(tok))
			}
		}
	})

	t.Run("oidc: tokens of 3 s renewed while the node pulls", func(t *testing.T) {
		// A load balancer in front that ends every watch after a second
		// (cloud load balancers cut long requests): the wait resumes its
		// watch again and again, with tokens renewed as they near expiry.
		proxy := newAPIProxy(t, c.Server, ca, time.Second)
		slowDigest := pushNodeImage(t, e, "acme/kube-keyless-slow", "1", 256<<10, 1)
		e.Front.SetPublic("acme/kube-keyless-slow")
		ref, _ := name.ParseReference(e.Host + "/acme/kube-keyless-slow:1")
		img, err := remote.Image(ref, remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}))
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		layer, _ := layers[0].Digest()
		e.Front.Inject(ghcrsim.Fault{Match: layer.String(), Stall: 8 * time.Second})
		defer k.Issuer.SetLife(3 * time.Second)()
		issued := k.Issuer.Issued()
		start := time.Now()
		res := e.RunAction(t, inputs("acme/kube-keyless-slow:1", "kube-auth", "oidc", "kube-server", proxy.URL,
			"kube-ca", proxy.caPEM(), "kube-audience", KubeAudience), k.Issuer.Env()...)
		took := time.Since(start)
		prepulled(t, res, slowDigest)
		tokens := since(issued, k.Issuer.Issued())
		tokensSafe(t, res, tokens)
		if took < 8*time.Second || len(tokens) < 4 {
			t.Errorf("%d tokens of 3 s for a run of %s: want the stalled pull (8 s) and at least 4", len(tokens), took.Round(time.Millisecond))
		}
		t.Logf("%d tokens of 3 s over %s", len(tokens), took.Round(time.Millisecond))
	})

	t.Run("an expired ID token is refused and named", func(t *testing.T) {
		defer k.Issuer.SetLife(-time.Minute)()
		issued := k.Issuer.Issued()
		res := e.RunAction(t, inputs("acme/kube-keyless:1", oidcForm...), k.Issuer.Env()...)
		if res.ExitCode == 0 || !badKubeAuth(t, res) || !strings.Contains(res.Stdout, "refused the workflow") ||
			!strings.Contains(res.Stdout, "structured JWT authentication") {
			t.Errorf("exit %d, want a failure naming kube-auth and the JWT authenticator\n%s", res.ExitCode, res.Stdout)
		}
		// The first is expired when it arrives, so it is never used: one
		// token for the request, one more on its 401, then the refusal.
		if tokens := since(issued, k.Issuer.Issued()); len(tokens) != 3 {
			t.Errorf("%d ID tokens, want 3 (the primed one expired at once, one for the request, one on its 401)", len(tokens))
		} else {
			tokensSafe(t, res, tokens)
		}
	})

	t.Run("an EKS token for another cluster is refused and named", func(t *testing.T) {
		seen := k.Seen()
		res := e.RunAction(t, inputs("acme/kube-keyless:1", "kube-auth", "eks", "kube-cluster", "other-cluster", "aws-role-arn", role,
			"aws-region", EKSRegion, "kube-server", c.Server, "kube-ca", string(ca)), awsEnv...)
		if res.ExitCode == 0 || !badKubeAuth(t, res) || !strings.Contains(res.Stdout, "access entry") || !strings.Contains(res.Stdout, role) {
			t.Errorf("exit %d, want a failure naming kube-auth, the role and the access entry\n%s", res.ExitCode, res.Stdout)
		}
		tokens := since(seen, k.Seen())
		tokensSafe(t, res, tokens)
	})
}

// The keyless identities of the tests.
const (
	keylessRole      = "arn:aws:iam::123456789012:role/github-deploy"
	keylessGKESA     = "deployer@acme-e2e.iam.gserviceaccount.com"
	keylessAKSClient = "11111111-2222-3333-4444-55555555e2e0"
)

// keylessForms binds an identity of each keyless form (the EKS role's
// access entry, the GKE service account, the AKS app, the ID token's
// subject) to exactly the documented role in namespace ns, has the cloud
// fakes describe the cluster at endpoint with ca, and returns each form's
// inputs (eks, gke, aks, oidc).
func keylessForms(tb testing.TB, c *Cluster, ns, endpoint string, ca []byte) map[string][]string {
	tb.Helper()
	k := c.Keyless
	eksUser, oidcUser := "eks:github-deploy", jwtUserPrefix+k.Issuer.Subject
	var subjects []rbacv1.Subject
	for _, u := range []string{eksUser, oidcUser, keylessGKESA, keylessAKSClient} {
		subjects = append(subjects, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: u})
	}
	documentedRole(tb, c, ns, subjects...)
	k.Grant(keylessRole, eksUser)
	tb.Cleanup(func() { k.Grant(keylessRole, "") })
	k.AWS.Describers[keylessRole] = true
	k.AWS.Clusters[EKSCluster] = oidctest.Cluster{Endpoint: endpoint, CA: ca}
	// GKE: the service account may be impersonated by the workflow's
	// principal and may get the cluster. AKS: the app's federated
	// credential names the workflow, and it holds the Cluster User role.
	k.Google.Impersonable[keylessGKESA], k.Google.Viewers[keylessGKESA] = true, true
	k.Google.Clusters[GKECluster] = oidctest.Cluster{Endpoint: endpoint, CA: ca}
	k.Azure.Federated[keylessAKSClient], k.Azure.ClusterUsers[keylessAKSClient] = k.Issuer.Subject, true
	k.Azure.Clusters[strings.ToLower(strings.TrimPrefix(AKSCluster, "/"))] = oidctest.Cluster{Endpoint: endpoint, CA: ca}
	return map[string][]string{
		"eks":  {"kube-auth", "eks", "kube-cluster", EKSCluster, "aws-role-arn", keylessRole, "aws-region", EKSRegion},
		"gke":  {"kube-auth", "gke", "kube-cluster", GKECluster, "gcp-workload-identity-provider", GKEProvider, "gcp-service-account", keylessGKESA},
		"aks":  {"kube-auth", "aks", "kube-cluster", AKSCluster, "azure-client-id", keylessAKSClient, "azure-tenant-id", AzureTenant},
		"oidc": {"kube-auth", "oidc", "kube-server", endpoint, "kube-ca", string(ca), "kube-audience", KubeAudience},
	}
}

// badKubeAuth: the run failed as bad input kube-auth, in its results.
func badKubeAuth(t *testing.T, res Result) bool {
	t.Helper()
	rs := results(t, res)
	return len(rs) == 1 && rs[0]["error_class"] == "bad-input:kube-auth" && strings.Contains(res.Stdout, `input "kube-auth"`)
}

// apiProxy is a TLS proxy in front of the API server. With cut, it ends
// every watch after cut, as a load balancer with a request timeout does;
// it records when the first request since the last reset arrived.
type apiProxy struct {
	*httptest.Server
	mu    sync.Mutex
	first time.Time
}

func newAPIProxy(tb testing.TB, server string, ca []byte, cut time.Duration) *apiProxy {
	tb.Helper()
	u, err := url.Parse(server)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	rp.FlushInterval = -1
	rp.ErrorLog = log.New(io.Discard, "", 0) // each cut watch is logged otherwise
	p := &apiProxy{}
	p.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		if p.first.IsZero() {
			p.first = time.Now()
		}
		p.mu.Unlock()
		if cut > 0 && r.URL.Query().Get("watch") == "true" {
			ctx, cancel := context.WithTimeout(r.Context(), cut)
			defer cancel()
			r = r.WithContext(ctx)
		}
		rp.ServeHTTP(w, r)
	}))
	tb.Cleanup(p.Close)
	return p
}

// firstSince is when the first request arrived after since; reset.
func (p *apiProxy) firstSince(since time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.first.Sub(since)
	p.first = time.Time{}
	return d
}

// caPEM is the proxy's certificate, for kube-ca.
func (p *apiProxy) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Certificate().Raw}))
}
