package oidc

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc/oidctest"
)

const (
	gkeProvider = "projects/123456789/locations/global/workloadIdentityPools/github/providers/actions"
	gkeCluster  = "projects/acme-prod/locations/europe-west1/clusters/web"
	aksClient   = "11111111-2222-3333-4444-555555555555"
	aksTenant   = "contoso.onmicrosoft.com"
	aksCluster  = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/web"
	testSubject = "repo:acme/app:ref:refs/heads/main"
)

var testCA = []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

// idTokens issues a distinct, unexpired ID token per request (life may be
// negative: already expired), and counts them.
type idTokens struct {
	n    int
	life time.Duration
}

func (s *idTokens) source(_ context.Context, aud string) (string, error) {
	s.n++
	enc := base64.RawURLEncoding.EncodeToString
	claims, _ := json.Marshal(map[string]any{"iss": "https://token.actions.githubusercontent.com", "aud": aud, "sub": testSubject,
		"jti": fmt.Sprint("jti-", s.n), "exp": time.Now().Add(s.life).Unix()})
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(claims) + ".c2ln", nil
}

func TestGKE(t *testing.T) {
	g := oidctest.NewGoogle(gkeProvider)
	defer g.Close()
	env := map[string]string{EnvGCPSTS: g.Server.URL + "/v1/token", EnvGCPIAMCredentials: g.Server.URL, EnvGKEContainer: g.Server.URL}
	ids := &idTokens{life: 5 * time.Minute}
	var masked []string
	mask := func(s string) { masked = append(masked, s) }
	cfg := Config{GCPWorkloadIdentityProvider: gkeProvider, Getenv: func(k string) string { return env[k] }}
	ci, err := NewGKE(cfg, gkeCluster, ids.source, mask)
	if err != nil {
		t.Fatal(err)
	}
	tok, exp, err := ci.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	who, err := g.Tokens.Lookup(tok, "cloud-platform")
	if err != nil || who != g.Principal(testSubject) || time.Until(exp) < 59*time.Minute || !contains(masked, tok) {
		t.Errorf("token for %q (%v), expiring in %s, masked %v", who, err, time.Until(exp), contains(masked, tok))
	}
	// Each token from a fresh ID token.
	if _, _, err := ci.Token(context.Background()); err != nil || ids.n != 2 {
		t.Errorf("%d ID tokens for two tokens (%v), want 2", ids.n, err)
	}
	g.Clusters[gkeCluster] = oidctest.Cluster{Endpoint: "https://34.1.2.3", CA: testCA}
	_, err = ci.Describe(context.Background())
	var ee *ExchangeError
	if !errors.As(err, &ee) || ee.Status != 403 || !strings.Contains(ee.Fix, "container.clusters.get") || !strings.Contains(ee.Fix, "kube-server and kube-ca") {
		t.Fatalf("err = %v, want 403 naming container.clusters.get", err)
	}
	g.Viewers[g.Principal(testSubject)] = true
	cl, err := ci.Describe(context.Background())
	if err != nil || cl.Endpoint != "https://34.1.2.3" || string(cl.CA) != string(testCA) {
		t.Fatalf("describe %+v, %v", cl, err)
	}

	// Impersonating a service account: its token, not the federated one.
	cfg.GCPServiceAccount = "deployer@acme-prod.iam.gserviceaccount.com"
	ci, _ = NewGKE(cfg, gkeCluster, ids.source, mask)
	if _, _, err := ci.Token(context.Background()); !errors.As(err, &ee) || ee.Status != 403 || !strings.Contains(ee.Fix, "roles/iam.workloadIdentityUser") {
		t.Errorf("impersonation refused: %v", err)
	}
	g.Impersonable[cfg.GCPServiceAccount] = true
	tok, _, err = ci.Token(context.Background())
	if who, _ := g.Tokens.Lookup(tok, "cloud-platform"); err != nil || who != cfg.GCPServiceAccount || ci.Who() != "service account "+cfg.GCPServiceAccount {
		t.Errorf("impersonated token for %q (%v)", who, err)
	}
}

func TestAKS(t *testing.T) {
	a := oidctest.NewAzure(aksTenant)
	defer a.Close()
	a.Federated[aksClient] = testSubject
	env := map[string]string{EnvAzureAuthority: a.Server.URL, EnvAzureARM: a.Server.URL}
	ids := &idTokens{life: 5 * time.Minute}
	var masked []string
	cfg := Config{AzureClientID: aksClient, AzureTenantID: aksTenant, Getenv: func(k string) string { return env[k] }}
	ci, err := NewAKS(cfg, aksCluster, ids.source, func(s string) { masked = append(masked, s) })
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		tok, exp, err := ci.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if who, err := a.Tokens.Lookup(tok, "6dae42f8-4368-4678-94ff-3960e28e3630"); err != nil || who != aksClient || time.Until(exp) < 59*time.Minute || !contains(masked, tok) {
			t.Errorf("token for %q (%v)", who, err)
		}
	}
	// A fresh client assertion each time: never one GitHub token reused
	// past its minutes (AADSTS700024).
	if ids.n != 3 || len(a.Assertions) != 3 || a.Assertions[0] == a.Assertions[1] || a.Assertions[1] == a.Assertions[2] {
		t.Errorf("%d ID tokens, assertions %v: want three distinct", ids.n, a.Assertions)
	}
	ids.life = -time.Minute
	var ee *ExchangeError
	if _, _, err := ci.Token(context.Background()); !errors.As(err, &ee) || !strings.Contains(ee.Message, "AADSTS700024") {
		t.Errorf("an expired assertion: %v", err)
	}
	ids.life = 5 * time.Minute
	a.Clusters[strings.ToLower(strings.TrimPrefix(aksCluster, "/"))] = oidctest.Cluster{Endpoint: "https://web-abc.hcp.westeurope.azmk8s.io:443", CA: testCA}
	if _, err := ci.Describe(context.Background()); !errors.As(err, &ee) || ee.Status != 403 || !strings.Contains(ee.Fix, "Azure Kubernetes Service Cluster User Role") {
		t.Fatalf("err = %v, want 403 naming the Cluster User role", err)
	}
	a.ClusterUsers[aksClient] = true
	cl, err := ci.Describe(context.Background())
	if err != nil || cl.Endpoint != "https://web-abc.hcp.westeurope.azmk8s.io:443" || string(cl.CA) != string(testCA) {
		t.Fatalf("describe %+v, %v", cl, err)
	}
}

func TestClusterInputs(t *testing.T) {
	for _, c := range []struct {
		err   error
		input string
	}{
		{ValidateGKE(Config{GCPWorkloadIdentityProvider: "pool"}, gkeCluster), "gcp-workload-identity-provider"},
		{ValidateGKE(Config{GCPWorkloadIdentityProvider: gkeProvider}, "web"), "kube-cluster"},
		{ValidateGKE(Config{GCPWorkloadIdentityProvider: gkeProvider, GCPServiceAccount: "deployer"}, gkeCluster), "gcp-service-account"},
		{ValidateAKS(Config{AzureClientID: "x", AzureTenantID: aksTenant}, aksCluster), "azure-client-id"},
		{ValidateAKS(Config{AzureClientID: aksClient}, aksCluster), "azure-tenant-id"},
		{ValidateAKS(Config{AzureClientID: aksClient, AzureTenantID: aksTenant}, "web"), "kube-cluster"},
	} {
		var bi *failure.BadInput
		if !errors.As(c.err, &bi) || bi.Input != c.input {
			t.Errorf("err = %v, want %s", c.err, c.input)
		}
	}
	if err := ValidateAKS(Config{AzureClientID: aksClient, AzureTenantID: aksTenant}, aksCluster); err != nil {
		t.Error(err)
	}
}
