package action

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/kube"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// Kube auth forms (kube-auth).
const (
	KubeAuthKubeconfig = "kubeconfig"
	KubeAuthEKS        = "eks"
	KubeAuthOIDC       = "oidc"
	KubeAuthGKE        = "gke"
	KubeAuthAKS        = "aks"
)

// KubeAuth is a keyless cluster destination: the cluster is reached with
// tokens minted from the workflow's ID token, never a stored credential.
// The cluster's endpoint may be learnt at run time (eks:DescribeCluster),
// so the kube.Config is completed in execute (connectKube).
type KubeAuth struct {
	Form string
	// Cluster is the cloud's name for it (kube-cluster).
	Cluster string
	// Server and CA, when given (kube-server, kube-ca).
	Server string
	CA     []byte
	// Audience of the ID token (kube-audience), for oidc.
	Audience string
	// Cloud is the identity's provider inputs: aws-role-arn and aws-region
	// (eks), gcp-workload-identity-provider and gcp-service-account (gke),
	// azure-client-id and azure-tenant-id (aks).
	Cloud oidc.Config
	// Settings are the namespace, node selector and timeout.
	Settings kube.Config
}

var keylessInputs = []string{"kube-cluster", "kube-server", "kube-ca", "kube-audience"}

// parseKubeAuth reads kube-auth and its inputs; nil for kubeconfig.
func parseKubeAuth(get, in Getter, timeout time.Duration) (*KubeAuth, error) {
	form := strings.ToLower(in("kube-auth"))
	switch form {
	case "", KubeAuthKubeconfig:
		for _, name := range keylessInputs {
			if in(name) != "" {
				return nil, failure.Bad(name, "is set, but kube-auth is kubeconfig", "set kube-auth: eks, gke, aks or oidc to reach the cluster with the workflow's ID token, or drop "+name)
			}
		}
		return nil, nil
	case KubeAuthEKS, KubeAuthOIDC, KubeAuthGKE, KubeAuthAKS:
	default:
		return nil, failure.Bad("kube-auth", fmt.Sprintf("%q is not a kube-auth form", form), "use kubeconfig, eks, gke, aks or oidc")
	}
	if strings.TrimSpace(get("kubeconfig")) != "" {
		return nil, failure.Bad("kubeconfig", "is set with kube-auth "+form, "drop kubeconfig: kube-auth "+form+" builds the cluster's credentials from the workflow's ID token")
	}
	if in("kube-context") != "" {
		return nil, failure.Bad("kube-context", "is set with kube-auth "+form, "drop it: there is no kubeconfig to pick a context from")
	}
	ka := &KubeAuth{Form: form, Cluster: in("kube-cluster"), Server: in("kube-server"), Audience: in("kube-audience")}
	var err error
	if ka.CA, err = kube.ParseCA(in("kube-ca")); err != nil {
		return nil, named(err, kubeInputs)
	}
	if ka.Settings, err = kube.Settings(in("kube-namespace"), in("kube-node-selector"), timeout); err != nil {
		return nil, named(err, kubeInputs)
	}
	if ka.Server != "" {
		// The endpoint and CA are checked now; the tokens come at run time.
		noTokens := func(context.Context) (kube.Token, error) { return kube.Token{}, nil }
		if _, err := ka.Settings.WithKeyless(kube.Keyless{Server: ka.Server, CA: ka.CA, Tokens: noTokens}); err != nil {
			return nil, named(err, kubeInputs)
		}
	}
	switch form {
	case KubeAuthOIDC:
		if ka.Server == "" {
			return nil, failure.Bad("kube-server", "is required with kube-auth oidc", "set it to the API server's URL, e.g. https://k8s.example.com:6443 (and kube-ca to its CA unless a public CA signed it)")
		}
		if ka.Audience == "" {
			return nil, failure.Bad("kube-audience", "is required with kube-auth oidc", "set it to an audience the API server's JWT authenticator accepts (its jwt.issuer.audiences)")
		}
		if ka.Cluster != "" {
			return nil, failure.Bad("kube-cluster", "is set with kube-auth oidc", "drop it: the API server is named by kube-server")
		}
	default:
		var err error
		switch form {
		case KubeAuthEKS:
			ka.Cloud = oidc.Config{AWSRoleARN: in("aws-role-arn"), AWSRegion: in("aws-region")}
			err = oidc.ValidateEKS(ka.Cloud, ka.Cluster)
		case KubeAuthGKE:
			ka.Cloud = oidc.Config{GCPWorkloadIdentityProvider: in("gcp-workload-identity-provider"), GCPServiceAccount: in("gcp-service-account")}
			err = oidc.ValidateGKE(ka.Cloud, ka.Cluster)
		case KubeAuthAKS:
			ka.Cloud = oidc.Config{AzureClientID: in("azure-client-id"), AzureTenantID: in("azure-tenant-id")}
			err = oidc.ValidateAKS(ka.Cloud, ka.Cluster)
		}
		if err != nil {
			return nil, named(err, oidcInputs)
		}
		if (ka.Server == "") != (len(ka.CA) == 0) {
			return nil, failure.Bad("kube-ca", "kube-server and kube-ca go together with kube-auth "+form, "give both (the cluster's endpoint and CA), or neither to have them from the cloud's API")
		}
		if ka.Audience != "" {
			return nil, failure.Bad("kube-audience", "is set with kube-auth "+form, "drop it: it is the audience of kube-auth oidc; the cloud's token exchange sets its own")
		}
	}
	return ka, nil
}

// connectKube completes a keyless destination: the token source, and for
// EKS without kube-server the endpoint and CA from eks:DescribeCluster.
func connectKube(ctx context.Context, cfg Config, rep *writer, env Env) (kube.Config, error) {
	ka := cfg.KubeAuth
	idToken := idTokenSource(env)
	k := kube.Keyless{Server: ka.Server, CA: ka.CA, Input: "kube-auth"}
	switch ka.Form {
	case KubeAuthOIDC:
		k.Who = fmt.Sprintf("the workflow's ID token (audience %s)", ka.Audience)
		k.Refused = fmt.Sprintf("configure the API server's structured JWT authentication to trust issuer https://token.actions.githubusercontent.com with audience %s, and bind the user its claim mapping gives (e.g. its sub claim) to the role in docs/kubernetes.md", ka.Audience)
		k.Unreachable = "check kube-server: the runner could not reach the API server"
		k.Tokens = func(ctx context.Context) (kube.Token, error) {
			jwt, err := idToken(ctx, ka.Audience)
			if err != nil {
				return kube.Token{}, err
			}
			rep.Mask(jwt)
			return kube.Token{Value: jwt, Expiry: jwtExpiry(jwt)}, nil
		}
	default:
		id, err := cloudIdentity(ka, env, idToken, rep.Mask, &k)
		if err != nil {
			return kube.Config{}, err
		}
		k.Tokens = func(ctx context.Context) (kube.Token, error) {
			tok, exp, err := id.Token(ctx)
			return kube.Token{Value: tok, Expiry: exp}, err
		}
		if k.Server == "" {
			var cl oidc.Cluster
			err := retry.Do(ctx, retry.Default(cfg.Retries), func(ctx context.Context) error {
				var err error
				cl, err = id.Describe(ctx)
				return err
			})
			if err != nil {
				return kube.Config{}, err
			}
			k.Server, k.CA = cl.Endpoint, cl.CA
			if cl.Private {
				k.Unreachable = fmt.Sprintf("cluster %s has no public endpoint: run the job on a runner inside its network, or enable the public endpoint for the runner's addresses", ka.Cluster)
			}
		}
	}
	kc, err := ka.Settings.WithKeyless(k)
	if err != nil {
		return kube.Config{}, err
	}
	return kc, kc.Prime(ctx)
}

// clusterIdentity mints a cloud cluster's tokens and describes it
// (oidc.EKS, oidc.ClusterIdentity).
type clusterIdentity interface {
	Token(ctx context.Context) (string, time.Time, error)
	Describe(ctx context.Context) (oidc.Cluster, error)
}

// cloudIdentity is the identity of eks, gke or aks, with the words of a
// refusal and of an unreachable endpoint set in k.
func cloudIdentity(ka *KubeAuth, env Env, idToken oidc.IDTokenSource, mask func(string), k *kube.Keyless) (clusterIdentity, error) {
	o := ka.Cloud
	o.Getenv = env.Getenv
	k.Unreachable = fmt.Sprintf("the endpoint of cluster %s did not answer: if it is private, run the job on a runner inside the cluster's network, or enable its public endpoint for the runner's addresses", ka.Cluster)
	switch ka.Form {
	case KubeAuthEKS:
		eks, err := oidc.NewEKS(o, ka.Cluster, idToken, mask)
		if err != nil {
			return nil, err
		}
		k.Who = "role " + eks.Role()
		k.Refused = fmt.Sprintf("give role %s an access entry on cluster %s (aws eks create-access-entry --cluster-name %s --principal-arn %s, with a Kubernetes group bound to the role in docs/kubernetes.md), and check that the cluster's authentication mode includes API",
			eks.Role(), ka.Cluster, ka.Cluster, eks.Role())
		return eks, nil
	case KubeAuthGKE:
		gke, err := oidc.NewGKE(o, ka.Cluster, idToken, mask)
		if err != nil {
			return nil, err
		}
		k.Who = gke.Who()
		k.Refused = fmt.Sprintf("check that %s may use the cluster (roles/container.clusterViewer on its project) and bind its Kubernetes user (the service account's email, or the workload identity's principal://... name) to the role in docs/kubernetes.md", gke.Who())
		return gke, nil
	}
	aks, err := oidc.NewAKS(o, ka.Cluster, idToken, mask)
	if err != nil {
		return nil, err
	}
	k.Who = aks.Who()
	k.Refused = fmt.Sprintf("the cluster must use Microsoft Entra ID authentication; bind %s (its service principal's object id) to the role in docs/kubernetes.md with Kubernetes RBAC, or give it an Azure Kubernetes Service RBAC role on the cluster", aks.Who())
	return aks, nil
}

// jwtExpiry is a JWT's exp claim, read without verifying (the API server
// verifies); five minutes from now when it has none.
func jwtExpiry(jwt string) time.Time {
	parts := strings.Split(jwt, ".")
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if len(parts) == 3 {
		if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil && json.Unmarshal(b, &claims) == nil && claims.Exp > 0 {
			return time.Unix(claims.Exp, 0)
		}
	}
	return time.Now().Add(5 * time.Minute)
}
