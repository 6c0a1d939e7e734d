package oidc

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// EKSProvider names the EKS exchanges in errors.
const EKSProvider = "eks"

// EKS token format (aws-iam-authenticator's pkg/token): the prefix, then
// unpadded base64url of a presigned sts:GetCallerIdentity URL whose signed
// headers include the cluster's name.
const (
	EKSTokenPrefix = "k8s-aws-v1."
	EKSClusterID   = "x-k8s-aws-id"
	// EKSTokenLife is how long a token is used: the API server accepts a
	// presigned URL for 15 minutes from X-Amz-Date (X-Amz-Expires=60 is
	// what the authenticator writes and EKS ignores), one minute is left
	// for clock skew, as aws-iam-authenticator does.
	EKSTokenLife = 14 * time.Minute
	// EnvEKS overrides the EKS API's endpoint, as the SDK's own
	// AWS_ENDPOINT_URL_<SERVICE> variables do.
	EnvEKS = "AWS_ENDPOINT_URL_EKS"
	// emptySHA256 is the payload hash of a request without a body.
	emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

var eksClusterRE = regexp.MustCompile(`^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$`)

// EKS reaches one EKS cluster as the IAM role the workflow's ID token
// assumes: tokens presigned with the role's session, renewed with a fresh
// ID token when the session nears its end.
type EKS struct {
	c       Config
	cluster string
	idToken IDTokenSource
	mask    func(string)

	mu    sync.Mutex
	creds aws.Credentials
}

// NewEKS checks the role, region and cluster (inputs aws-role-arn,
// aws-region, kube-cluster). c's other fields are the AWS ones of Config
// (Getenv and HTTPClient included).
func NewEKS(c Config, cluster string, idToken IDTokenSource, mask func(string)) (*EKS, error) {
	if err := ValidateEKS(c, cluster); err != nil {
		return nil, err
	}
	c.Provider = EKSProvider
	return &EKS{c: c, cluster: cluster, idToken: idToken, mask: mask}, nil
}

// ValidateEKS names the first missing or malformed input of kube-auth eks.
func ValidateEKS(c Config, cluster string) error {
	if !awsRoleRE.MatchString(c.AWSRoleARN) {
		return failure.Bad("aws-role-arn", fmt.Sprintf("%q is not an IAM role ARN", c.AWSRoleARN), "kube-auth eks assumes it with the ID token, e.g. arn:aws:iam::123456789012:role/github-deploy")
	}
	if c.AWSRegion == "" {
		return failure.Bad("aws-region", "is required with kube-auth eks", "set it to the cluster's region, e.g. eu-west-1")
	}
	if !eksClusterRE.MatchString(cluster) {
		return failure.Bad("kube-cluster", fmt.Sprintf("%q is not an EKS cluster name", cluster), "set it to the cluster's name as aws eks list-clusters shows it")
	}
	return nil
}

// Role is the IAM role, for messages.
func (e *EKS) Role() string { return e.c.AWSRoleARN }

// session is the role's credentials, assumed again when they end within
// five minutes (a fresh ID token each time: GitHub's live minutes).
func (e *EKS) session(ctx context.Context) (aws.Credentials, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.creds.AccessKeyID != "" && (!e.creds.CanExpire || time.Until(e.creds.Expires) > 5*time.Minute) {
		return e.creds, nil
	}
	jwt, err := e.idToken(ctx, "sts.amazonaws.com")
	if err != nil {
		return aws.Credentials{}, err
	}
	e.mask(jwt)
	creds, err := assumeRole(ctx, e.c, e.c.AWSRegion, jwt, e.mask)
	if err != nil {
		return aws.Credentials{}, err
	}
	e.creds = creds
	return creds, nil
}

// Token is a fresh EKS token, masked, and the time to stop using it.
func (e *EKS) Token(ctx context.Context) (string, time.Time, error) {
	creds, err := e.session(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	start := time.Now()
	tok, err := PresignEKSToken(ctx, e.c.stsClient(e.c.AWSRegion, credentials.StaticCredentialsProvider{Value: creds}), e.cluster)
	if err != nil {
		return "", time.Time{}, err
	}
	e.mask(tok)
	return tok, start.Add(EKSTokenLife), nil
}

// PresignEKSToken presigns sts:GetCallerIdentity with client's
// credentials and region, the cluster's name in the signed x-k8s-aws-id
// header, and encodes it as an EKS token.
func PresignEKSToken(ctx context.Context, client *sts.Client, cluster string) (string, error) {
	req, err := sts.NewPresignClient(client).PresignGetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}, func(po *sts.PresignOptions) {
		po.ClientOptions = append(po.ClientOptions, func(o *sts.Options) {
			o.APIOptions = append(o.APIOptions,
				smithyhttp.SetHeaderValue(EKSClusterID, cluster),
				smithyhttp.SetHeaderValue("X-Amz-Expires", "60"))
		})
	})
	if err != nil {
		return "", fmt.Errorf("presigning sts:GetCallerIdentity: %w", err)
	}
	return EKSTokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(req.URL)), nil
}

// Cluster is what eks:DescribeCluster says of the cluster.
type Cluster struct {
	Endpoint string
	// CA is the cluster's certificate authority, PEM.
	CA []byte
	// Private: the endpoint has no public access (a runner outside the
	// VPC cannot reach it).
	Private bool
}

// Describe is eks:DescribeCluster (GET /clusters/<name>), SigV4-signed
// with the role's session: the endpoint and CA.
func (e *EKS) Describe(ctx context.Context) (Cluster, error) {
	creds, err := e.session(ctx)
	if err != nil {
		return Cluster{}, err
	}
	base := e.c.endpoint(EnvEKS, "https://eks."+e.c.AWSRegion+".amazonaws.com")
	var out struct {
		Cluster struct {
			Endpoint             string
			Status               string
			CertificateAuthority struct{ Data string }
			ResourcesVpcConfig   struct{ EndpointPublicAccess bool }
		} `json:"cluster"`
	}
	step := "eks:DescribeCluster " + e.cluster
	err = e.c.do(ctx, call{provider: EKSProvider, step: step,
		fix:    fmt.Sprintf("give role %s eks:DescribeCluster on cluster %s in %s (or set kube-server and kube-ca)", e.c.AWSRoleARN, e.cluster, e.c.AWSRegion),
		method: http.MethodGet, url: base + "/clusters/" + url.PathEscape(e.cluster),
		sign: func(r *http.Request) error {
			return v4.NewSigner().SignHTTP(r.Context(), creds, r, emptySHA256, "eks", e.c.AWSRegion, time.Now())
		}}, &out)
	if err != nil {
		return Cluster{}, err
	}
	ca, err := base64.StdEncoding.DecodeString(out.Cluster.CertificateAuthority.Data)
	if err != nil || out.Cluster.Endpoint == "" || len(ca) == 0 {
		return Cluster{}, &ExchangeError{Provider: EKSProvider, Step: step, Message: fmt.Sprintf("the answer has no endpoint or CA (cluster status %q)", out.Cluster.Status),
			Fix: "wait until the cluster is ACTIVE"}
	}
	return Cluster{Endpoint: out.Cluster.Endpoint, CA: ca, Private: !out.Cluster.ResourcesVpcConfig.EndpointPublicAccess}, nil
}
