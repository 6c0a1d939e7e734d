package oidctest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Tokens is a fake issuer's record of the access tokens it minted: who
// they stand for, for what audience, until when. A webhook authenticator
// asks it as a cloud's API server asks the cloud.
type Tokens struct {
	mu     sync.Mutex
	issued map[string]grant
}

type grant struct {
	who, audience string
	expires       time.Time
}

func (t *Tokens) mint(prefix, who, audience string, life time.Duration) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.issued == nil {
		t.issued = map[string]grant{}
	}
	tok := prefix + random(16)
	t.issued[tok] = grant{who: who, audience: audience, expires: time.Now().Add(life)}
	return tok
}

// Lookup is the identity a token stands for, when it is one of these,
// unexpired, for audience.
func (t *Tokens) Lookup(tok, audience string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	g, ok := t.issued[tok]
	switch {
	case !ok:
		return "", fmt.Errorf("unknown token")
	case time.Now().After(g.expires):
		return "", fmt.Errorf("token expired at %s", g.expires.Format(time.RFC3339))
	case g.audience != audience:
		return "", fmt.Errorf("token is for %s, not %s", g.audience, audience)
	}
	return g.who, nil
}

func bearer(r *http.Request) string {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return tok
}

func jsonError(w http.ResponseWriter, code int, status, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "status": status, "message": msg}})
}

// Google is Google STS (token exchange), IAM credentials
// (generateAccessToken) and the Container API (clusters.get).
type Google struct {
	Server *httptest.Server
	Tokens Tokens
	// Provider is the workload identity provider resource the STS
	// accepts; Trust decides its subject tokens.
	Provider string
	Trust    func(jwt string) error
	// Impersonable service accounts; Viewers may get clusters.
	Impersonable map[string]bool
	Viewers      map[string]bool
	// Clusters by resource name (projects/P/locations/L/clusters/N).
	Clusters map[string]Cluster
	// Life of the access tokens (default an hour).
	Life time.Duration
}

// Principal is the federated identity of a subject, as Google names it.
func (g *Google) Principal(sub string) string {
	pool, _, _ := strings.Cut(g.Provider, "/providers/")
	return "principal://iam.googleapis.com/" + pool + "/subject/" + sub
}

// NewGoogle starts the fake.
func NewGoogle(provider string) *Google {
	g := &Google{Provider: provider, Impersonable: map[string]bool{}, Viewers: map[string]bool{}, Clusters: map[string]Cluster{}}
	g.Server = httptest.NewServer(g)
	return g
}

func (g *Google) Close() { g.Server.Close() }

func (g *Google) life() time.Duration {
	if g.Life == 0 {
		return time.Hour
	}
	return g.Life
}

func (g *Google) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/v1/token" && r.Method == http.MethodPost:
		var req map[string]string
		_ = json.NewDecoder(r.Body).Decode(&req)
		if req["grantType"] != "urn:ietf:params:oauth:grant-type:token-exchange" || req["subjectTokenType"] != "urn:ietf:params:oauth:token-type:jwt" ||
			req["audience"] != "//iam.googleapis.com/"+g.Provider {
			w.WriteHeader(400)
			_, _ = w.Write([]byte(`{"error":"invalid_request","error_description":"bad grant, subject token type or audience"}`))
			return
		}
		claims := Claims(req["subjectToken"])
		if claims.Aud != "https://iam.googleapis.com/"+g.Provider || time.Now().Unix() > claims.Exp {
			w.WriteHeader(400)
			_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"The audience in ID Token does not match the expected audience, or the token expired."}`))
			return
		}
		if g.Trust != nil {
			if err := g.Trust(req["subjectToken"]); err != nil {
				w.WriteHeader(400)
				_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"` + err.Error() + `"}`))
				return
			}
		}
		tok := g.Tokens.mint("ya29.fed-", g.Principal(claims.Sub), "cloud-platform", g.life())
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
			"token_type": "Bearer", "expires_in": int(g.life() / time.Second)})
	case strings.HasPrefix(r.URL.Path, "/v1/projects/-/serviceAccounts/") && strings.HasSuffix(r.URL.Path, ":generateAccessToken"):
		who, err := g.Tokens.Lookup(bearer(r), "cloud-platform")
		if err != nil {
			jsonError(w, 401, "UNAUTHENTICATED", "Request had invalid authentication credentials: "+err.Error())
			return
		}
		sa := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v1/projects/-/serviceAccounts/"), ":generateAccessToken")
		if !g.Impersonable[sa] {
			jsonError(w, 403, "PERMISSION_DENIED", fmt.Sprintf("Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist) for %s", who))
			return
		}
		tok := g.Tokens.mint("ya29.sa-", sa, "cloud-platform", g.life())
		_ = json.NewEncoder(w).Encode(map[string]any{"accessToken": tok, "expireTime": time.Now().Add(g.life()).UTC().Format(time.RFC3339)})
	case strings.HasPrefix(r.URL.Path, "/v1/projects/") && r.Method == http.MethodGet:
		who, err := g.Tokens.Lookup(bearer(r), "cloud-platform")
		if err != nil {
			jsonError(w, 401, "UNAUTHENTICATED", "Request had invalid authentication credentials: "+err.Error())
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/v1/")
		if !g.Viewers[who] {
			jsonError(w, 403, "PERMISSION_DENIED", "Required \"container.clusters.get\" permission(s) for \""+name+"\".")
			return
		}
		c, ok := g.Clusters[name]
		if !ok {
			jsonError(w, 404, "NOT_FOUND", "Not found: "+name+".")
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"name": name, "status": "RUNNING", "endpoint": strings.TrimPrefix(c.Endpoint, "https://"),
			"masterAuth": map[string]string{"clusterCaCertificate": base64.StdEncoding.EncodeToString(c.CA)}})
	default:
		jsonError(w, 404, "NOT_FOUND", r.URL.Path)
	}
}

// JWTClaims are the claims of an ID token the fakes read (their
// signature is the API server's business in these tests).
type JWTClaims struct {
	Iss, Sub, Aud, Jti string
	Exp                int64
}

// Claims reads a JWT's claims without verifying it.
func Claims(jwt string) JWTClaims {
	var c JWTClaims
	if parts := strings.Split(jwt, "."); len(parts) == 3 {
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(b, &c)
	}
	return c
}

// Azure is Entra ID's token endpoint (client credentials with a client
// assertion) and ARM's listClusterUserCredential.
type Azure struct {
	Server *httptest.Server
	Tokens Tokens
	Tenant string
	// Federated: client id → the subject its federated credential allows.
	Federated map[string]string
	// ClusterUsers may list a cluster's user credentials.
	ClusterUsers map[string]bool
	// Clusters by resource id (without the leading slash, lower case).
	Clusters map[string]Cluster
	Life     time.Duration

	mu sync.Mutex
	// Assertions is every client assertion's jti, in order.
	Assertions []string
}

// NewAzure starts the fake.
func NewAzure(tenant string) *Azure {
	a := &Azure{Tenant: tenant, Federated: map[string]string{}, ClusterUsers: map[string]bool{}, Clusters: map[string]Cluster{}}
	a.Server = httptest.NewServer(a)
	return a
}

func (a *Azure) Close() { a.Server.Close() }

func (a *Azure) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/"+a.Tenant+"/oauth2/v2.0/token" && r.Method == http.MethodPost {
		_ = r.ParseForm()
		f := r.PostForm
		fail := func(code, desc string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
		}
		client, assertion := f.Get("client_id"), f.Get("client_assertion")
		claims := Claims(assertion)
		switch {
		case f.Get("grant_type") != "client_credentials" || f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
			fail("invalid_request", "AADSTS900144: client credentials with a jwt-bearer assertion expected")
			return
		case time.Now().Unix() > claims.Exp:
			fail("invalid_client", "AADSTS700024: Client assertion is not within its valid time range.")
			return
		case claims.Aud != "api://AzureADTokenExchange":
			fail("invalid_client", "AADSTS700212: No matching federated identity record found for presented assertion audience '"+claims.Aud+"'.")
			return
		case a.Federated[client] == "" || a.Federated[client] != claims.Sub:
			fail("invalid_client", "AADSTS70021: No matching federated identity record found for presented assertion.")
			return
		}
		audience := strings.TrimSuffix(f.Get("scope"), "/.default")
		if audience != "https://management.azure.com" && audience != "6dae42f8-4368-4678-94ff-3960e28e3630" {
			fail("invalid_scope", "AADSTS70011: The provided value for the input parameter 'scope' is not valid.")
			return
		}
		a.mu.Lock()
		a.Assertions = append(a.Assertions, claims.Jti)
		a.mu.Unlock()
		life := a.Life
		if life == 0 {
			life = time.Hour
		}
		tok := a.Tokens.mint("entra-", client, audience, life)
		_ = json.NewEncoder(w).Encode(map[string]any{"token_type": "Bearer", "expires_in": int(life / time.Second), "access_token": tok})
		return
	}
	if strings.HasSuffix(r.URL.Path, "/listClusterUserCredential") && r.Method == http.MethodPost {
		who, err := a.Tokens.Lookup(bearer(r), "https://management.azure.com")
		if err != nil {
			jsonError(w, 401, "InvalidAuthenticationToken", "The access token is invalid: "+err.Error())
			return
		}
		id := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"), "/listClusterUserCredential"))
		if !a.ClusterUsers[who] {
			jsonError(w, 403, "AuthorizationFailed", fmt.Sprintf("The client '%s' does not have authorization to perform action 'Microsoft.ContainerService/managedClusters/listClusterUserCredential/action' over scope '/%s'", who, id))
			return
		}
		c, ok := a.Clusters[id]
		if !ok {
			jsonError(w, 404, "ResourceNotFound", "The Resource '"+id+"' was not found.")
			return
		}
		kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: aks\n  cluster:\n    server: %s\n    certificate-authority-data: %s\nusers:\n- name: clusterUser\n  user:\n    exec:\n      command: kubelogin\n", c.Endpoint, base64.StdEncoding.EncodeToString(c.CA))
		_ = json.NewEncoder(w).Encode(map[string]any{"kubeconfigs": []map[string]string{{"name": "clusterUser", "value": base64.StdEncoding.EncodeToString([]byte(kc))}}})
		return
	}
	jsonError(w, 404, "NotFound", r.URL.Path)
}
