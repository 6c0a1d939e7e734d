package action

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc/oidctest"
)

const testRole = "arn:aws:iam::123456789012:role/deploy"

// Each keyless form names its missing or contradictory inputs.
func TestParseKubeAuth(t *testing.T) {
	md := testMetadata(t)
	eks := map[string]string{"kube-auth": "eks", "kube-cluster": "prod", "aws-role-arn": testRole, "aws-region": "eu-west-1"}
	gke := map[string]string{"kube-auth": "gke", "kube-cluster": "projects/acme-prod/locations/europe-west1/clusters/web",
		"gcp-workload-identity-provider": "projects/123456789/locations/global/workloadIdentityPools/github/providers/actions"}
	aks := map[string]string{"kube-auth": "aks", "azure-client-id": "11111111-2222-3333-4444-555555555555", "azure-tenant-id": "contoso.onmicrosoft.com",
		"kube-cluster": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/web"}
	oidcForm := map[string]string{"kube-auth": "oidc", "kube-server": "https://k8s.example:6443", "kube-audience": "k8s"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{"image": "ghcr.io/acme/app:1", "destination": "kubernetes"}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	for _, c := range []struct {
		name   string
		inputs map[string]string
		input  string
	}{
		{"eks", with(eks), ""},
		{"eks with endpoint and CA given", with(eks, "kube-server", "https://abc.eks.amazonaws.com", "kube-ca", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"), ""},
		{"eks without a cluster", with(eks, "kube-cluster", ""), "kube-cluster"},
		{"eks without a role", with(eks, "aws-role-arn", ""), "aws-role-arn"},
		{"eks without a region", with(eks, "aws-region", ""), "aws-region"},
		{"eks server without CA", with(eks, "kube-server", "https://abc.eks.amazonaws.com"), "kube-ca"},
		{"eks with a kubeconfig too", with(eks, "kubeconfig", testKubeconfig("https://10.0.0.1:6443", "t0k")), "kubeconfig"},
		{"eks with an audience", with(eks, "kube-audience", "x"), "kube-audience"},
		{"oidc", with(oidcForm), ""},
		{"oidc without a server", with(oidcForm, "kube-server", ""), "kube-server"},
		{"oidc over plain http", with(oidcForm, "kube-server", "http://k8s.example"), "kube-server"},
		{"oidc without an audience", with(oidcForm, "kube-audience", ""), "kube-audience"},
		{"oidc with a bad CA", with(oidcForm, "kube-ca", "not a certificate"), "kube-ca"},
		{"keyless input with kubeconfig", with(map[string]string{"kubeconfig": testKubeconfig("https://10.0.0.1:6443", "t0k"), "kube-cluster": "prod"}), "kube-cluster"},
		{"gke", with(gke), ""},
		{"gke impersonating", with(gke, "gcp-service-account", "deployer@acme-prod.iam.gserviceaccount.com"), ""},
		{"gke without a provider", with(gke, "gcp-workload-identity-provider", ""), "gcp-workload-identity-provider"},
		{"gke with a cluster name only", with(gke, "kube-cluster", "web"), "kube-cluster"},
		{"aks", with(aks), ""},
		{"aks without a tenant", with(aks, "azure-tenant-id", ""), "azure-tenant-id"},
		{"aks without a client", with(aks, "azure-client-id", ""), "azure-client-id"},
		{"aks with a cluster name only", with(aks, "kube-cluster", "web"), "kube-cluster"},
		{"aks server without CA", with(aks, "kube-server", "https://web.hcp.westeurope.azmk8s.io:443"), "kube-ca"},
		{"unknown form", with(map[string]string{"kube-auth": "exec"}), "kube-auth"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := ParseConfig(getter(c.inputs), md)
			if c.input == "" {
				if err != nil || cfg.KubeAuth == nil || cfg.Kube != nil {
					t.Fatalf("err %v, KubeAuth %+v", err, cfg.KubeAuth)
				}
				return
			}
			var bi *failure.BadInput
			if !errors.As(err, &bi) || bi.Input != c.input || bi.Fix == "" {
				t.Errorf("err = %v, want %s named with a fix", err, c.input)
			}
		})
	}
}

// Without id-token: write, either form fails as a bad input that says so,
// before any cloud API is called.
func TestKubeAuthNeedsIDToken(t *testing.T) {
	fake := oidctest.NewAWS("eu-west-1")
	defer fake.Close()
	for _, inputs := range []map[string]string{
		{"kube-auth": "eks", "kube-cluster": "prod", "aws-role-arn": testRole, "aws-region": "eu-west-1"},
		{"kube-auth": "oidc", "kube-server": "https://127.0.0.1:1", "kube-audience": "k8s"},
	} {
		inputs["image"], inputs["destination"], inputs["auth"] = "ghcr.io/acme/app:1", "kubernetes", "anonymous"
		s := runStep(t, inputs, map[string]string{"AWS_ENDPOINT_URL_STS": fake.Server.URL, "AWS_ENDPOINT_URL_EKS": fake.Server.URL})
		_, shown := logText(s.stdout)
		if s.code != ExitBadInput || !strings.Contains(shown, "id-token: write") || !strings.Contains(shown, "kube-auth "+inputs["kube-auth"]) {
			t.Errorf("%s: exit %d, want %d naming id-token: write\n%s", inputs["kube-auth"], s.code, ExitBadInput, shown)
		}
	}
	if len(fake.Calls) != 0 {
		t.Errorf("AWS was called: %v", fake.Calls)
	}
}

// An EKS role without eks:DescribeCluster is told to get it (or to give
// kube-server and kube-ca); the ID token and the session are masked.
func TestKubeAuthEKSDescribeRefused(t *testing.T) {
	fake := oidctest.NewAWS("eu-west-1")
	defer fake.Close()
	jwt := fakeJWT(t)
	env, _ := idTokenEndpoint(t, jwt, 0)
	env["AWS_ENDPOINT_URL_STS"], env["AWS_ENDPOINT_URL_EKS"] = fake.Server.URL, fake.Server.URL
	s := runStep(t, map[string]string{"image": "ghcr.io/acme/app:1", "destination": "kubernetes", "auth": "anonymous", "retries": "0",
		"kube-auth": "eks", "kube-cluster": "prod", "aws-role-arn": testRole, "aws-region": "eu-west-1"}, env)
	_, shown := logText(s.stdout)
	if s.code != ExitFailed || !strings.Contains(shown, "eks:DescribeCluster") || !strings.Contains(shown, "kube-server and kube-ca") || !strings.Contains(shown, "403") {
		t.Errorf("exit %d, want a failure naming eks:DescribeCluster\n%s", s.code, shown)
	}
	if !strings.Contains(s.stdout, "::add-mask::"+jwt) || strings.Contains(shown, jwt) {
		t.Errorf("the ID token is not masked, or shown")
	}
}

func TestJWTExpiry(t *testing.T) {
	if got := jwtExpiry("a.eyJleHAiOjE3MDAwMDAwMDB9.c"); !got.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("exp read as %v", got)
	}
	if got := time.Until(jwtExpiry("garbage")); got < 4*time.Minute || got > 5*time.Minute {
		t.Errorf("no exp: %v from now, want five minutes", got)
	}
}
