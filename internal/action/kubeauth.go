package action

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/kube"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// Kube auth forms (kube-auth).
const (
	KubeAuthKubeconfig = "kubeconfig"
	KubeAuthEKS        = "eks"
	KubeAuthOIDC       = "oidc"
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
	// AWS is the role and region (aws-role-arn, aws-region), for eks.
	AWS oidc.Config
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
				return nil, bad(name, "is set, but kube-auth is kubeconfig", "set kube-auth: eks or oidc to reach the cluster with the workflow's ID token, or drop "+name)
			}
		}
		return nil, nil
	case "gke", "aks":
		return nil, bad("kube-auth", form+" is not supported yet", "use kube-auth: eks or oidc, or a kubeconfig")
	case KubeAuthEKS, KubeAuthOIDC:
	default:
		return nil, bad("kube-auth", fmt.Sprintf("%q is not a kube-auth form", form), "use kubeconfig, eks or oidc")
	}
	if strings.TrimSpace(get("kubeconfig")) != "" {
		return nil, bad("kubeconfig", "is set with kube-auth "+form, "drop kubeconfig: kube-auth "+form+" builds the cluster's credentials from the workflow's ID token")
	}
	if in("kube-context") != "" {
		return nil, bad("kube-context", "is set with kube-auth "+form, "drop it: there is no kubeconfig to pick a context from")
	}
	ka := &KubeAuth{Form: form, Cluster: in("kube-cluster"), Server: in("kube-server"), Audience: in("kube-audience")}
	var err error
	if ka.CA, err = kube.ParseCA(in("kube-ca")); err != nil {
		return nil, err
	}
	if ka.Settings, err = kube.Settings(in("kube-namespace"), in("kube-node-selector"), timeout); err != nil {
		return nil, err
	}
	if ka.Server != "" {
		// The endpoint and CA are checked now; the tokens come at run time.
		noTokens := func(context.Context) (kube.Token, error) { return kube.Token{}, nil }
		if _, err := ka.Settings.WithKeyless(kube.Keyless{Server: ka.Server, CA: ka.CA, Tokens: noTokens}); err != nil {
			return nil, err
		}
	}
	switch form {
	case KubeAuthOIDC:
		if ka.Server == "" {
			return nil, bad("kube-server", "is required with kube-auth oidc", "set it to the API server's URL, e.g. https://k8s.example.com:6443 (and kube-ca to its CA unless a public CA signed it)")
		}
		if ka.Audience == "" {
			return nil, bad("kube-audience", "is required with kube-auth oidc", "set it to an audience the API server's JWT authenticator accepts (its jwt.issuer.audiences)")
		}
		if ka.Cluster != "" {
			return nil, bad("kube-cluster", "is set with kube-auth oidc", "drop it: the API server is named by kube-server")
		}
	case KubeAuthEKS:
		ka.AWS = oidc.Config{AWSRoleARN: in("aws-role-arn"), AWSRegion: in("aws-region")}
		if err := oidc.ValidateEKS(ka.AWS, ka.Cluster); err != nil {
			return nil, err
		}
		if (ka.Server == "") != (len(ka.CA) == 0) {
			return nil, bad("kube-ca", "kube-server and kube-ca go together with kube-auth eks", "give both (aws eks describe-cluster: endpoint and certificateAuthority.data), or neither to have them from eks:DescribeCluster")
		}
		if ka.Audience != "" {
			return nil, bad("kube-audience", "is set with kube-auth eks", "drop it: EKS tokens are presigned STS requests, the ID token's audience is sts.amazonaws.com")
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
	case KubeAuthEKS:
		o := ka.AWS
		o.Getenv = env.Getenv
		eks, err := oidc.NewEKS(o, ka.Cluster, idToken, rep.Mask)
		if err != nil {
			return kube.Config{}, err
		}
		k.Who = "role " + eks.Role()
		k.Refused = fmt.Sprintf("give role %s an access entry on cluster %s (aws eks create-access-entry --cluster-name %s --principal-arn %s, with a Kubernetes group bound to the role in docs/kubernetes.md), and check that the cluster's authentication mode includes API",
			eks.Role(), ka.Cluster, ka.Cluster, eks.Role())
		k.Unreachable = fmt.Sprintf("the endpoint of cluster %s did not answer: if it is private, run the job on a runner inside the cluster's VPC, or enable its public endpoint for the runner's addresses", ka.Cluster)
		k.Tokens = func(ctx context.Context) (kube.Token, error) {
			tok, exp, err := eks.Token(ctx)
			return kube.Token{Value: tok, Expiry: exp}, err
		}
		if k.Server == "" {
			var cl oidc.Cluster
			err := retry.Do(ctx, retry.Default(cfg.Retries), func(ctx context.Context) error {
				var err error
				cl, err = eks.Describe(ctx)
				return err
			})
			if err != nil {
				return kube.Config{}, err
			}
			k.Server, k.CA = cl.Endpoint, cl.CA
			if cl.Private {
				k.Unreachable = fmt.Sprintf("cluster %s has no public endpoint (endpointPublicAccess false): run the job on a runner inside its VPC, or enable the public endpoint for the runner's addresses", ka.Cluster)
			}
		}
	}
	kc, err := ka.Settings.WithKeyless(k)
	if err != nil {
		return kube.Config{}, err
	}
	return kc, kc.Prime(ctx)
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
