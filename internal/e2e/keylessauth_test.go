package e2e

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/oidc/oidctest"
)

// The suite's cluster authenticates the way managed clusters do, besides
// its token file: a token webhook (--authentication-token-webhook-config-file)
// that verifies EKS tokens as aws-iam-authenticator does against the
// SigV4-checking STS fake, and structured JWT authentication
// (--authentication-config) trusting the fake Actions ID-token issuer.
// Both are served by this process for the cluster's whole life: starting
// them costs nothing beside the cluster, so they are always on.

// Keyless is what the cluster trusts for the keyless forms.
type Keyless struct {
	Issuer *IDIssuer
	AWS    *oidctest.AWS
	Google *oidctest.Google
	Azure  *oidctest.Azure
	// STSHost is the STS endpoint EKS tokens must be presigned for.
	STSHost string
	webhook *httptest.Server

	mu sync.Mutex
	// access maps an IAM role to its Kubernetes user (EKS access entries).
	access map[string]string
	// seen is every token the webhook was asked about.
	seen []string
}

// Keyless cluster names and audiences of the harness.
const (
	EKSCluster    = "e2e-eks"
	GKEProvider   = "projects/123456789/locations/global/workloadIdentityPools/github/providers/actions"
	GKECluster    = "projects/acme-e2e/locations/europe-west1/clusters/e2e"
	AzureTenant   = "contoso-e2e"
	AKSCluster    = "/subscriptions/00000000-0000-0000-0000-00000000e2e0/resourceGroups/e2e/providers/Microsoft.ContainerService/managedClusters/e2e"
	aksServerApp  = "6dae42f8-4368-4678-94ff-3960e28e3630"
	EKSRegion     = "eu-west-1"
	KubeAudience  = "ghcr-pull-e2e"
	jwtUserPrefix = "github:"
	idRequestTok  = "actions-request-token-keyless"
)

// IDIssuer is the Actions runtime's ID-token endpoint (plain HTTP, as the
// action reaches it through ACTIONS_ID_TOKEN_REQUEST_URL) and the OIDC
// issuer whose keys sign the tokens (HTTPS, discovery and JWKS, as
// token.actions.githubusercontent.com serves them).
type IDIssuer struct {
	TLS     *httptest.Server
	Runtime *httptest.Server
	key     *rsa.PrivateKey
	// Subject of every token.
	Subject string

	mu     sync.Mutex
	life   time.Duration
	issued []string
}

func newIDIssuer() (*IDIssuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	s := &IDIssuer{key: key, Subject: "repo:acme/app:ref:refs/heads/main", life: 10 * time.Minute}
	s.TLS = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_ = json.NewEncoder(w).Encode(map[string]any{"issuer": s.TLS.URL, "jwks_uri": s.TLS.URL + "/.well-known/jwks",
				"id_token_signing_alg_values_supported": []string{"RS256"}, "response_types_supported": []string{"id_token"},
				"subject_types_supported": []string{"public"}})
		case "/.well-known/jwks":
			_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "e2e",
				"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes())}}})
		default:
			http.NotFound(w, r)
		}
	}))
	s.Runtime = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// As the runtime: the request token, the URL's own api-version
		// kept, the audience added.
		if r.Header.Get("Authorization") != "Bearer "+idRequestTok || r.URL.Query().Get("audience") == "" || r.URL.Query().Get("api-version") != "2.0" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"value": s.Sign(r.URL.Query().Get("audience"))})
	}))
	return s, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// Sign issues an ID token for audience, living the issuer's current life
// (negative: already expired).
func (s *IDIssuer) Sign(audience string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{"iss": s.TLS.URL, "aud": audience, "sub": s.Subject, "repository": "acme/app",
		"iat": now.Add(-time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(s.life).Unix(), "jti": randomHex(8)})
	input := b64([]byte(`{"alg":"RS256","kid":"e2e","typ":"JWT"}`)) + "." + b64(claims)
	sum := sha256.Sum256([]byte(input))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	tok := input + "." + b64(sig)
	s.issued = append(s.issued, tok)
	return tok
}

// SetLife sets the life of the tokens issued from now on; it returns a
// function restoring the previous one.
func (s *IDIssuer) SetLife(d time.Duration) (restore func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.life
	s.life = d
	return func() { s.mu.Lock(); s.life = old; s.mu.Unlock() }
}

// Issued is every token issued so far.
func (s *IDIssuer) Issued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

// Env is the Actions runtime's environment of a job with id-token: write.
func (s *IDIssuer) Env() []string {
	return []string{"ACTIONS_ID_TOKEN_REQUEST_URL=" + s.Runtime.URL + "/token?api-version=2.0", "ACTIONS_ID_TOKEN_REQUEST_TOKEN=" + idRequestTok}
}

// CAPEM is the issuer's TLS certificate, which the API server trusts.
func (s *IDIssuer) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.TLS.Certificate().Raw})
}

func (s *IDIssuer) Close() { s.TLS.Close(); s.Runtime.Close() }

// startKeyless starts the issuer, the AWS fake and the token webhook, and
// writes the API server's configuration for them in dir; it returns the
// API server's flags.
func startKeyless(dir string) (*Keyless, []string, error) {
	iss, err := newIDIssuer()
	if err != nil {
		return nil, nil, err
	}
	k := &Keyless{Issuer: iss, AWS: oidctest.NewAWS(EKSRegion), Google: oidctest.NewGoogle(GKEProvider), Azure: oidctest.NewAzure(AzureTenant),
		access: map[string]string{}}
	k.STSHost = strings.TrimPrefix(k.AWS.Server.URL, "http://")
	// AWS trusts the issuer's tokens for sts.amazonaws.com; the signature
	// and the rest are the API server's business in this harness.
	k.AWS.Trust = func(role, jwt string) error {
		if !strings.Contains(jwtClaims(jwt), `"aud":"sts.amazonaws.com"`) {
			return fmt.Errorf("audience is not sts.amazonaws.com")
		}
		return nil
	}
	k.webhook = httptest.NewServer(http.HandlerFunc(k.review))
	authCfg := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1beta1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: %s
    audiences: [%s]
    certificateAuthority: |
%s
  claimMappings:
    username: {claim: sub, prefix: %q}
`, iss.TLS.URL, KubeAudience, indent(string(iss.CAPEM()), "      "), jwtUserPrefix)
	webhookCfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: webhook
  cluster: {server: %s/authenticate}
users:
- name: apiserver
contexts:
- name: webhook
  context: {cluster: webhook, user: apiserver}
current-context: webhook
`, k.webhook.URL)
	authFile, webhookFile := filepath.Join(dir, "pki", "authentication.yaml"), filepath.Join(dir, "pki", "token-webhook.kubeconfig")
	for f, data := range map[string]string{authFile: authCfg, webhookFile: webhookCfg} {
		if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
			return k, nil, err
		}
	}
	// The webhook's answers are cached a second only, so an expired token
	// is refused as soon as the verifier says so.
	return k, []string{"--authentication-config", authFile, "--authentication-token-webhook-config-file", webhookFile,
		"--authentication-token-webhook-version", "v1", "--authentication-token-webhook-cache-ttl", "1s"}, nil
}

func indent(s, pad string) string {
	return pad + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad)
}

func jwtClaims(jwt string) string {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return ""
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	return string(b)
}

// Grant maps role to a Kubernetes user, as an EKS access entry does; ""
// removes the entry.
func (k *Keyless) Grant(role, user string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if user == "" {
		delete(k.access, role)
		return
	}
	k.access[role] = user
}

// Seen is every token the webhook reviewed.
func (k *Keyless) Seen() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.seen...)
}

// review is the token webhook: an EKS token verified for EKSCluster and
// mapped through the access entries, a Google or Entra token looked up at
// its fake issuer (as GKE and AKS ask theirs); anything else is not ours
// to authenticate.
func (k *Keyless) review(w http.ResponseWriter, r *http.Request) {
	var tr struct {
		APIVersion string `json:"apiVersion"`
		Spec       struct{ Token string }
	}
	_ = json.NewDecoder(r.Body).Decode(&tr)
	status := map[string]any{"authenticated": false}
	cloud := func(who string, err error) {
		k.mu.Lock()
		k.seen = append(k.seen, tr.Spec.Token)
		k.mu.Unlock()
		if err != nil {
			status["error"] = err.Error()
			return
		}
		status = map[string]any{"authenticated": true, "user": map[string]any{"username": who, "groups": []string{"system:authenticated"}}}
	}
	switch {
	case strings.HasPrefix(tr.Spec.Token, "ya29."):
		// GKE: the token's identity, as Google's token info names it.
		cloud(k.Google.Tokens.Lookup(tr.Spec.Token, "cloud-platform"))
	case strings.HasPrefix(tr.Spec.Token, "entra-"):
		// AKS with Entra ID: a token for the AKS server application.
		cloud(k.Azure.Tokens.Lookup(tr.Spec.Token, aksServerApp))
	case strings.HasPrefix(tr.Spec.Token, "k8s-aws-v1."):
		// EKS: aws-iam-authenticator's verification, then the role's
		// access entry.
		role, err := oidctest.VerifyEKSToken(tr.Spec.Token, EKSCluster, []string{k.STSHost})
		k.mu.Lock()
		user, ok := k.access[role]
		k.mu.Unlock()
		if err == nil && !ok {
			err = fmt.Errorf("no access entry for %s", role)
		}
		cloud(user, err)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"apiVersion": tr.APIVersion, "kind": "TokenReview", "status": status})
}

// CloudEnv points the action at the fakes.
func (k *Keyless) CloudEnv() []string {
	return append([]string{"AWS_ENDPOINT_URL_STS=" + k.AWS.Server.URL, "AWS_ENDPOINT_URL_EKS=" + k.AWS.Server.URL,
		"GHCR_PULL_GCP_STS_URL=" + k.Google.Server.URL + "/v1/token", "GHCR_PULL_GCP_IAMCREDENTIALS_URL=" + k.Google.Server.URL,
		"GHCR_PULL_GCP_CONTAINER_URL=" + k.Google.Server.URL,
		"GHCR_PULL_AZURE_AUTHORITY_URL=" + k.Azure.Server.URL, "GHCR_PULL_AZURE_ARM_URL=" + k.Azure.Server.URL}, k.Issuer.Env()...)
}

func (k *Keyless) Close() {
	k.Google.Close()
	k.Azure.Close()
	k.webhook.Close()
	k.AWS.Close()
	k.Issuer.Close()
}
