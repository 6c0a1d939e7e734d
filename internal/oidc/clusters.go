package oidc

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// GKE and AKS: a cluster reached as the workload identity the ID token
// federates to. Each token is minted from a fresh ID token (GitHub's live
// minutes; a cached client assertion is what fails with AADSTS700024).

// Provider names of the cluster forms, and their endpoint overrides.
const (
	GKEProvider = "gke"
	AKSProvider = "aks"
	// EnvGKEContainer overrides the Container API (default
	// https://container.googleapis.com); EnvAzureARM the Resource Manager
	// (default https://management.azure.com).
	EnvGKEContainer = "GHCR_PULL_GCP_CONTAINER_URL"
	EnvAzureARM     = "GHCR_PULL_AZURE_ARM_URL"
	// AKSServerScope is the AKS server application's scope (the same in
	// every tenant).
	AKSServerScope = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"
	armScope       = "https://management.azure.com/.default"
	armAPIVersion  = "2024-05-01"
)

var (
	gkeClusterRE = regexp.MustCompile(`^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z0-9-]+/clusters/[a-z][a-z0-9-]{0,39}$`)
	aksClusterRE = regexp.MustCompile(`(?i)^/subscriptions/[0-9a-f-]{36}/resourceGroups/[-\w._()]+/providers/Microsoft\.ContainerService/managedClusters/[a-z0-9][-_a-z0-9]{0,62}$`)
)

// ClusterIdentity mints tokens for one cluster and describes it.
type ClusterIdentity struct {
	c       Config
	cluster string
	idToken IDTokenSource
	mask    func(string)
}

// ValidateGKE names the first bad input of kube-auth gke.
func ValidateGKE(c Config, cluster string) error {
	c.Provider = GCP
	if err := c.Validate(); err != nil {
		return err
	}
	if !gkeClusterRE.MatchString(cluster) {
		return failure.Bad("kube-cluster", fmt.Sprintf("%q is not a GKE cluster resource", cluster), "use projects/<project id>/locations/<region or zone>/clusters/<name>")
	}
	return nil
}

// ValidateAKS names the first bad input of kube-auth aks.
func ValidateAKS(c Config, cluster string) error {
	c.Provider = AzureACR
	if err := c.Validate(); err != nil {
		return err
	}
	if !aksClusterRE.MatchString(cluster) {
		return failure.Bad("kube-cluster", fmt.Sprintf("%q is not an AKS cluster resource id", cluster),
			"use /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.ContainerService/managedClusters/<name> (az aks show --query id)")
	}
	return nil
}

// NewGKE is a GKE cluster (projects/P/locations/L/clusters/N) reached as
// the workload identity, or gcp-service-account impersonated.
func NewGKE(c Config, cluster string, idToken IDTokenSource, mask func(string)) (*ClusterIdentity, error) {
	if err := ValidateGKE(c, cluster); err != nil {
		return nil, err
	}
	c.Provider = GKEProvider
	return &ClusterIdentity{c: c, cluster: cluster, idToken: idToken, mask: mask}, nil
}

// NewAKS is an AKS cluster (its resource id) reached as the app
// registration azure-client-id.
func NewAKS(c Config, cluster string, idToken IDTokenSource, mask func(string)) (*ClusterIdentity, error) {
	if err := ValidateAKS(c, cluster); err != nil {
		return nil, err
	}
	c.Provider = AKSProvider
	return &ClusterIdentity{c: c, cluster: strings.TrimPrefix(cluster, "/"), idToken: idToken, mask: mask}, nil
}

// Who names the identity, for messages.
func (ci *ClusterIdentity) Who() string {
	if ci.c.Provider == AKSProvider {
		return "app registration " + ci.c.AzureClientID
	}
	if ci.c.GCPServiceAccount != "" {
		return "service account " + ci.c.GCPServiceAccount
	}
	return "the workload identity of " + ci.c.GCPWorkloadIdentityProvider
}

func (ci *ClusterIdentity) freshIDToken(ctx context.Context) (string, error) {
	aud := "api://AzureADTokenExchange"
	if ci.c.Provider == GKEProvider {
		aud = "https://iam.googleapis.com/" + ci.c.GCPWorkloadIdentityProvider
	}
	jwt, err := ci.idToken(ctx, aud)
	if err != nil {
		return "", err
	}
	ci.mask(jwt)
	return jwt, nil
}

// token is an access token for scope (AKS) or Google's cloud-platform.
func (ci *ClusterIdentity) token(ctx context.Context, scope string) (string, time.Time, error) {
	jwt, err := ci.freshIDToken(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	if ci.c.Provider == GKEProvider {
		return gcpAccessToken(ctx, ci.c, jwt, ci.mask)
	}
	return entraToken(ctx, ci.c, jwt, scope, ci.mask)
}

// Token is a fresh token for the cluster's API server, masked.
func (ci *ClusterIdentity) Token(ctx context.Context) (string, time.Time, error) {
	return ci.token(ctx, AKSServerScope)
}

// Describe reads the cluster's endpoint and CA: the Container API's
// cluster resource (GKE), or the user kubeconfig of ARM's
// listClusterUserCredential (AKS; only its server and CA are read).
func (ci *ClusterIdentity) Describe(ctx context.Context) (Cluster, error) {
	tok, _, err := ci.token(ctx, armScope)
	if err != nil {
		return Cluster{}, err
	}
	if ci.c.Provider == GKEProvider {
		var out struct {
			Endpoint   string
			Status     string
			MasterAuth struct{ ClusterCaCertificate string }
			// Private: endpoint is the private one and no public one is
			// served (privateClusterConfig.enablePrivateEndpoint).
			PrivateClusterConfig struct{ EnablePrivateEndpoint bool }
		}
		base := strings.TrimRight(ci.c.endpoint(EnvGKEContainer, "https://container.googleapis.com"), "/")
		step := "container.clusters.get " + ci.cluster
		err := ci.c.do(ctx, call{provider: GKEProvider, step: step,
			fix:    fmt.Sprintf("grant %s container.clusters.get on the project (roles/container.clusterViewer), or set kube-server and kube-ca", ci.Who()),
			method: http.MethodGet, url: base + "/v1/" + ci.cluster, bearer: tok}, &out)
		if err != nil {
			return Cluster{}, err
		}
		ca, err := base64.StdEncoding.DecodeString(out.MasterAuth.ClusterCaCertificate)
		if err != nil || out.Endpoint == "" || len(ca) == 0 {
			return Cluster{}, &ExchangeError{Provider: GKEProvider, Step: step, Message: fmt.Sprintf("the answer has no endpoint or CA (status %q)", out.Status), Fix: "wait until the cluster is RUNNING"}
		}
		return Cluster{Endpoint: "https://" + out.Endpoint, CA: ca, Private: out.PrivateClusterConfig.EnablePrivateEndpoint}, nil
	}
	var out struct {
		Kubeconfigs []struct{ Name, Value string }
	}
	base := strings.TrimRight(ci.c.endpoint(EnvAzureARM, "https://management.azure.com"), "/")
	step := "listClusterUserCredential " + ci.cluster
	err = ci.c.do(ctx, call{provider: AKSProvider, step: step,
		fix:    fmt.Sprintf("give %s the Azure Kubernetes Service Cluster User Role on the cluster, or set kube-server and kube-ca", ci.Who()),
		method: http.MethodPost, url: base + "/" + ci.cluster + "/listClusterUserCredential?api-version=" + armAPIVersion, bearer: tok}, &out)
	if err != nil {
		return Cluster{}, err
	}
	noKubeconfig := &ExchangeError{Provider: AKSProvider, Step: step, Message: "the answer holds no kubeconfig with a server and CA"}
	if len(out.Kubeconfigs) == 0 {
		return Cluster{}, noKubeconfig
	}
	doc, err := base64.StdEncoding.DecodeString(out.Kubeconfigs[0].Value)
	if err != nil {
		return Cluster{}, noKubeconfig
	}
	var kc struct {
		Clusters []struct {
			Cluster struct {
				Server string `yaml:"server"`
				CA     string `yaml:"certificate-authority-data"`
			}
		}
	}
	if yaml.Unmarshal(doc, &kc) != nil || len(kc.Clusters) == 0 {
		return Cluster{}, noKubeconfig
	}
	ca, err := base64.StdEncoding.DecodeString(kc.Clusters[0].Cluster.CA)
	if err != nil || kc.Clusters[0].Cluster.Server == "" || len(ca) == 0 {
		return Cluster{}, noKubeconfig
	}
	// The user kubeconfig also names kubelogin (an exec plugin): ignored,
	// the tokens are minted here.
	return Cluster{Endpoint: kc.Clusters[0].Cluster.Server, CA: ca}, nil
}
