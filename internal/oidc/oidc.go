// Package oidc turns the workflow's OIDC ID token into short-lived registry
// credentials: AWS ECR, Google Artifact Registry, Azure ACR, Docker Hub, or
// any RFC 8693 token-exchange endpoint. It knows nothing of GitHub Actions:
// the ID token arrives through an IDTokenSource, and every secret it sees or
// derives is handed to a mask function before anything could print it.
//
// Failures are classified like registry answers: a provider's 4xx is an
// *ExchangeError (a configuration problem, with the likely fix; never
// retried), 5xx, 429 and network failures are *failure.Transient. Retrying
// is the caller's job (internal/retry), as for probes.
//
// Errors name the settings by oidc's own words: the fields of Config
// (AWSRoleARN), and for a cluster identity Cluster (the cluster argument),
// Form (which identity: eks, gke, aks), Endpoint and CA (Cluster's fields,
// which the caller may give instead of having them described). A
// *failure.BadInput's Input is one, and any text may name one as
// {AWSRegion}; the caller gives them the names its users know (the
// action: its inputs, at one boundary).
package oidc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// Provider names.
const (
	AWSECR        = "aws-ecr"
	GCP           = "gcp"
	AzureACR      = "azure-acr"
	DockerHub     = "dockerhub"
	TokenExchange = "token-exchange"
)

// Config is the OIDC inputs, validated by Validate.
type Config struct {
	Provider string
	// Audience overrides the ID token's audience.
	Audience                    string
	AWSRoleARN, AWSRegion       string
	GCPWorkloadIdentityProvider string
	GCPServiceAccount           string
	AzureClientID               string
	AzureTenantID               string
	DockerHubConnectionID       string
	TokenExchangeURL            string
	// Username is Docker Hub's org user, and the token-exchange username
	// when the endpoint names none.
	Username string
	// Registry is the host of the image pulled: the ECR region comes from
	// it, and ACR's exchange endpoint lives on it.
	Registry string
	// Getenv reads the endpoint overrides (the Env* names in http.go, and
	// AWS_ENDPOINT_URL_STS and _ECR in aws.go); nil reads none: the
	// providers' public endpoints.
	Getenv func(string) string
	// HTTPClient is used for every exchange; nil means a client with a
	// 30 s timeout.
	HTTPClient *http.Client
}

// IDTokenSource fetches the workflow's ID token for an audience.
type IDTokenSource func(ctx context.Context, audience string) (string, error)

// ExchangeError: the provider refused the exchange; retrying will not help.
type ExchangeError struct {
	Provider string
	// Step names the call that failed, e.g. "sts:AssumeRoleWithWebIdentity".
	Step    string
	Status  int
	Message string // the provider's words, clipped
	Fix     string
}

func (e *ExchangeError) Error() string {
	s := fmt.Sprintf("%s: %s refused the exchange", e.Provider, e.Step)
	if e.Status != 0 {
		s += fmt.Sprintf(" (%d %s)", e.Status, http.StatusText(e.Status))
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Fix != "" {
		s += ". " + e.Fix
	}
	return s
}

var (
	gcpProviderRE = regexp.MustCompile(`^projects/[0-9]+/locations/global/workloadIdentityPools/[a-z0-9-]+/providers/[a-z0-9-]+$`)
	awsRoleRE     = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$`)
	ecrHostRE     = regexp.MustCompile(`^[0-9]{12}\.dkr\.ecr(-fips)?\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$`)
	uuidRE        = regexp.MustCompile(`^[0-9a-fA-F-]{36}$`)
)

// Validate names the first missing or malformed input for the provider.
func (c Config) Validate() error {
	switch c.Provider {
	case AWSECR:
		if !awsRoleRE.MatchString(c.AWSRoleARN) {
			return failure.Bad("AWSRoleARN", fmt.Sprintf("%q is not an IAM role ARN", c.AWSRoleARN), "e.g. arn:aws:iam::123456789012:role/github-ecr-pull")
		}
		if _, err := c.awsRegion(); err != nil {
			return err
		}
	case GCP:
		if !gcpProviderRE.MatchString(c.GCPWorkloadIdentityProvider) {
			return failure.Bad("GCPWorkloadIdentityProvider", fmt.Sprintf("%q is not a provider resource", c.GCPWorkloadIdentityProvider),
				"use projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>")
		}
		if sa := c.GCPServiceAccount; sa != "" && !strings.Contains(sa, "@") {
			return failure.Bad("GCPServiceAccount", fmt.Sprintf("%q is not a service account email", sa), "e.g. puller@my-project.iam.gserviceaccount.com")
		}
	case AzureACR:
		if !uuidRE.MatchString(c.AzureClientID) {
			return failure.Bad("AzureClientID", fmt.Sprintf("%q is not an application (client) id", c.AzureClientID), "copy it from the app registration's overview")
		}
		if c.AzureTenantID == "" || strings.ContainsAny(c.AzureTenantID, "/?# ") {
			return failure.Bad("AzureTenantID", fmt.Sprintf("%q is not a tenant id", c.AzureTenantID), "copy it from the app registration's overview")
		}
	case DockerHub:
		if c.DockerHubConnectionID == "" {
			return failure.Bad("DockerHubConnectionID", "is required with {Provider} dockerhub", "copy it from the Docker Hub organization's OIDC connection")
		}
		if c.Username == "" {
			return failure.Bad("Username", "is required with {Provider} dockerhub", "set it to the Docker Hub organization user")
		}
	case TokenExchange:
		if !tlsOrLoopback(c.TokenExchangeURL) {
			return failure.Bad("TokenExchangeURL", fmt.Sprintf("%q is not an https URL", c.TokenExchangeURL), "the ID token may only be sent over TLS (or to loopback)")
		}
	default:
		return failure.Bad("Provider", fmt.Sprintf("%q is not a provider", c.Provider), "use aws-ecr, gcp, azure-acr, dockerhub or token-exchange")
	}
	return nil
}

// tlsOrLoopback says whether the ID token would travel over TLS or stay on
// this machine. It parses the URL rather than matching prefixes: by prefix,
// http://127.example.com and http://localhost.example.com looked loopback.
func tlsOrLoopback(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return false
	}
	switch u.Scheme {
	case "https":
		return true
	case "http":
		return ghcr.IsLoopback(u.Hostname())
	}
	return false
}

// DefaultAudience is the ID token audience each provider expects.
func (c Config) DefaultAudience() string {
	switch c.Provider {
	case AWSECR:
		return "sts.amazonaws.com"
	case GCP:
		return "https://iam.googleapis.com/" + c.GCPWorkloadIdentityProvider
	case AzureACR:
		return "api://AzureADTokenExchange"
	case DockerHub:
		return "https://identity.docker.com"
	}
	return c.TokenExchangeURL
}

func (c Config) audience() string {
	if c.Audience != "" {
		return c.Audience
	}
	return c.DefaultAudience()
}

func (c Config) awsRegion() (string, error) {
	if c.AWSRegion != "" {
		return c.AWSRegion, nil
	}
	if m := ecrHostRE.FindStringSubmatch(c.Registry); m != nil {
		return m[2], nil
	}
	return "", failure.Bad("AWSRegion", fmt.Sprintf("no region given and %q is not an ECR host", c.Registry), "set {AWSRegion}, e.g. eu-west-1")
}

// client is the HTTP client of every exchange. It never follows a
// redirect: Go re-sends a request's body on 307 and 308, to any host and
// over plain http, and the bodies here carry the ID token or a client
// assertion; a redirect would get around the TLS-or-loopback rule on the
// endpoints. A provider that redirects is an error naming the endpoint.
func (c Config) client() *http.Client {
	hc := http.Client{Timeout: 30 * time.Second}
	if c.HTTPClient != nil {
		hc = *c.HTTPClient
	}
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		return &RedirectError{Endpoint: endpointOf(via[0].URL), Location: endpointOf(req.URL)}
	}
	return &hc
}

// RedirectError: an exchange endpoint answered with a redirect, which is
// not followed (the request carries a token).
type RedirectError struct {
	Endpoint, Location string
}

func (e *RedirectError) Error() string {
	return fmt.Sprintf("%s answered with a redirect to %s; requests that carry a token are never redirected: point the endpoint at the final URL", e.Endpoint, e.Location)
}

// endpointOf is a URL without its query and fragment, which may carry
// tokens.
func endpointOf(u *url.URL) string {
	v := *u
	v.RawQuery, v.Fragment, v.User = "", "", nil
	return v.String()
}

// Exchange fetches the ID token and trades it for registry credentials.
func Exchange(ctx context.Context, c Config, idToken IDTokenSource, mask func(string)) (registryauth.Credentials, error) {
	if err := c.Validate(); err != nil {
		return registryauth.Credentials{}, err
	}
	jwt, err := idToken(ctx, c.audience())
	if err != nil {
		return registryauth.Credentials{}, err
	}
	if jwt == "" {
		return registryauth.Credentials{}, errors.New("the Actions runtime returned an empty ID token")
	}
	mask(jwt)
	var user, password string
	switch c.Provider {
	case AWSECR:
		user, password, err = exchangeAWS(ctx, c, jwt, mask)
	case GCP:
		user, password, err = exchangeGCP(ctx, c, jwt, mask)
	case AzureACR:
		user, password, err = exchangeAzure(ctx, c, jwt, mask)
	case DockerHub:
		user, password, err = exchangeDockerHub(ctx, c, jwt, mask)
	case TokenExchange:
		user, password, err = exchangeGeneric(ctx, c, jwt, mask)
	}
	if err != nil {
		return registryauth.Credentials{}, err
	}
	mask(password)
	return registryauth.Credentials{Mode: registryauth.ModeOIDC, Username: user, Password: password, Provider: c.Provider}, nil
}
