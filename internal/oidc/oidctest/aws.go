// Package oidctest holds in-process fakes of the cloud identity APIs
// ghcr-pull calls, for its unit and end-to-end tests: AWS STS and EKS,
// which check SigV4 signatures by recomputing them as AWS does, and the
// verification of EKS tokens aws-iam-authenticator does.
package oidctest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AWS is STS (AssumeRoleWithWebIdentity, GetCallerIdentity) and EKS
// (DescribeCluster) in one server.
type AWS struct {
	Server *httptest.Server
	Region string
	// Trust decides a web identity token for a role (nil: any token).
	Trust func(role, jwt string) error
	// Describers may call eks:DescribeCluster.
	Describers map[string]bool
	// Clusters by name: endpoint and CA (PEM).
	Clusters map[string]Cluster
	// SessionLife is the life of assumed sessions (default an hour).
	SessionLife time.Duration

	mu       sync.Mutex
	sessions map[string]session // by access key id
	Assumed  int
	Calls    []string // "sts:GetCallerIdentity", ...
}

// Cluster is an EKS cluster of the fake.
type Cluster struct {
	Endpoint string
	CA       []byte
	Private  bool
}

type session struct {
	secret, token, role string
	expires             time.Time
}

// NewAWS starts the fake (plain HTTP on loopback).
func NewAWS(region string) *AWS {
	a := &AWS{Region: region, Describers: map[string]bool{}, Clusters: map[string]Cluster{}, sessions: map[string]session{}}
	a.Server = httptest.NewServer(a)
	return a
}

func (a *AWS) Close() { a.Server.Close() }

func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (a *AWS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/clusters/") {
		a.describe(w, r)
		return
	}
	_ = r.ParseForm()
	switch r.Form.Get("Action") {
	case "AssumeRoleWithWebIdentity":
		a.assume(w, r)
	case "GetCallerIdentity":
		a.callerIdentity(w, r)
	default:
		awsError(w, 400, "InvalidAction", "unknown action "+r.Form.Get("Action"))
	}
}

func awsError(w http.ResponseWriter, code int, typ, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("x-amzn-ErrorType", typ)
	w.WriteHeader(code)
	fmt.Fprintf(w, `<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>fake</RequestId></ErrorResponse>`, typ, msg)
}

func (a *AWS) assume(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "" {
		awsError(w, 400, "InvalidRequest", "AssumeRoleWithWebIdentity is unsigned")
		return
	}
	role, jwt := r.PostForm.Get("RoleArn"), r.PostForm.Get("WebIdentityToken")
	if a.Trust != nil {
		if err := a.Trust(role, jwt); err != nil {
			awsError(w, 403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity: "+err.Error())
			return
		}
	}
	life := a.SessionLife
	if life == 0 {
		life = time.Hour
	}
	s := session{secret: "secret-" + random(12), token: "session-" + random(12), role: role, expires: time.Now().Add(life)}
	id := "ASIA" + strings.ToUpper(random(8))
	a.mu.Lock()
	a.sessions[id] = s
	a.Assumed++
	a.Calls = append(a.Calls, "sts:AssumeRoleWithWebIdentity")
	a.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey><SessionToken>%s</SessionToken><Expiration>%s</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>`,
		id, s.secret, s.token, s.expires.UTC().Format(time.RFC3339))
}

// assumedARN is the caller identity of a role's session, as STS names it.
func assumedARN(role string) string {
	i := strings.Index(role, ":role/")
	if i < 0 {
		return role
	}
	name := role[i+len(":role/"):]
	name = name[strings.LastIndex(name, "/")+1:]
	return strings.Replace(role[:i], ":iam:", ":sts:", 1) + ":assumed-role/" + name + "/ghcr-pull"
}

// callerIdentity answers a presigned GetCallerIdentity whose signature,
// session and date check out.
func (a *AWS) callerIdentity(w http.ResponseWriter, r *http.Request) {
	s, err := a.verify(r, "sts", true)
	if err != nil {
		awsError(w, 403, "SignatureDoesNotMatch", err.Error())
		return
	}
	a.mu.Lock()
	a.Calls = append(a.Calls, "sts:GetCallerIdentity")
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"GetCallerIdentityResponse": map[string]any{"GetCallerIdentityResult": map[string]string{
		"Account": accountOf(s.role), "Arn": assumedARN(s.role), "UserId": "AROAFAKE:ghcr-pull"}}})
}

func accountOf(arn string) string {
	if f := strings.Split(arn, ":"); len(f) > 4 {
		return f[4]
	}
	return ""
}

func (a *AWS) describe(w http.ResponseWriter, r *http.Request) {
	s, err := a.verify(r, "eks", false)
	if err != nil {
		w.Header().Set("x-amzn-ErrorType", "InvalidSignatureException")
		http.Error(w, `{"message":"`+err.Error()+`"}`, 403)
		return
	}
	a.mu.Lock()
	a.Calls = append(a.Calls, "eks:DescribeCluster")
	a.mu.Unlock()
	name := strings.TrimPrefix(r.URL.Path, "/clusters/")
	w.Header().Set("Content-Type", "application/json")
	if !a.Describers[s.role] {
		w.Header().Set("x-amzn-ErrorType", "AccessDeniedException")
		w.WriteHeader(403)
		fmt.Fprintf(w, `{"message":"User: %s is not authorized to perform: eks:DescribeCluster on resource: arn:aws:eks:%s:%s:cluster/%s"}`, assumedARN(s.role), a.Region, accountOf(s.role), name)
		return
	}
	c, ok := a.Clusters[name]
	if !ok {
		w.Header().Set("x-amzn-ErrorType", "ResourceNotFoundException")
		w.WriteHeader(404)
		fmt.Fprintf(w, `{"message":"No cluster found for name: %s."}`, name)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"cluster": map[string]any{"name": name, "status": "ACTIVE", "endpoint": c.Endpoint,
		"certificateAuthority": map[string]string{"data": base64.StdEncoding.EncodeToString(c.CA)},
		"resourcesVpcConfig":   map[string]any{"endpointPublicAccess": !c.Private, "endpointPrivateAccess": true}}})
}

// verify checks a SigV4 signature as AWS does: it rebuilds the canonical
// request from what arrived, derives the signing key from the session's
// secret, and compares; then the credential scope (region, service), the
// session token and the date (15 minutes of skew; a presigned request
// also within X-Amz-Expires, at most 15 minutes, of it).
func (a *AWS) verify(r *http.Request, service string, presigned bool) (session, error) {
	q := r.URL.Query()
	var cred, signed, sig, date, token string
	if presigned {
		cred, signed, sig, date, token = q.Get("X-Amz-Credential"), q.Get("X-Amz-SignedHeaders"), q.Get("X-Amz-Signature"), q.Get("X-Amz-Date"), q.Get("X-Amz-Security-Token")
		if q.Get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" {
			return session{}, fmt.Errorf("X-Amz-Algorithm %q", q.Get("X-Amz-Algorithm"))
		}
	} else {
		auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ")
		if !ok {
			return session{}, fmt.Errorf("not SigV4 signed")
		}
		for _, part := range strings.Split(auth, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			switch k {
			case "Credential":
				cred = v
			case "SignedHeaders":
				signed = v
			case "Signature":
				sig = v
			}
		}
		date, token = r.Header.Get("X-Amz-Date"), r.Header.Get("X-Amz-Security-Token")
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return session{}, fmt.Errorf("credential %q is not a SigV4 scope", cred)
	}
	if scope[2] != a.Region || scope[3] != service {
		return session{}, fmt.Errorf("credential scope %s/%s, want %s/%s", scope[2], scope[3], a.Region, service)
	}
	a.mu.Lock()
	s, ok := a.sessions[scope[0]]
	a.mu.Unlock()
	if !ok || s.token != token {
		return session{}, fmt.Errorf("the security token included in the request is invalid")
	}
	if time.Now().After(s.expires) {
		return session{}, fmt.Errorf("the security token included in the request is expired")
	}
	at, err := time.Parse("20060102T150405Z", date)
	if err != nil || !strings.HasPrefix(date, scope[1]) {
		return session{}, fmt.Errorf("X-Amz-Date %q does not match the scope", date)
	}
	if presigned {
		exp, err := strconv.Atoi(q.Get("X-Amz-Expires"))
		if err != nil || exp < 1 || exp > 900 {
			return session{}, fmt.Errorf("X-Amz-Expires %q", q.Get("X-Amz-Expires"))
		}
		// STS accepts a presigned GetCallerIdentity for 15 minutes from
		// its date whatever X-Amz-Expires says (EKS tokens rely on it).
		if time.Since(at) > 15*time.Minute {
			return session{}, fmt.Errorf("Signature expired: %s is now earlier than %s", at.Add(15*time.Minute).Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
		}
	} else if d := time.Since(at); d > 15*time.Minute || d < -15*time.Minute {
		return session{}, fmt.Errorf("Signature expired")
	}
	body, _ := io.ReadAll(r.Body)
	payload := sha256.Sum256(body)
	want := Signature(r, signed, presigned, hex.EncodeToString(payload[:]), s.secret, scope[1], a.Region, service, date)
	if !hmac.Equal([]byte(want), []byte(sig)) {
		return session{}, fmt.Errorf("the request signature we calculated does not match the signature you provided")
	}
	return s, nil
}

// Signature is SigV4's over r (the AWS documentation's algorithm, written
// out, not the SDK's signer): the canonical request of the signed headers
// and the query (without X-Amz-Signature), then the string to sign with
// the key derived from secret, day, region and service.
func Signature(r *http.Request, signedHeaders string, presigned bool, payloadHash, secret, day, region, service, date string) string {
	q := r.URL.Query()
	q.Del("X-Amz-Signature")
	var keys []string
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var qs []string
	for _, k := range keys {
		vs := append([]string(nil), q[k]...)
		sort.Strings(vs)
		for _, v := range vs {
			qs = append(qs, uriEncode(k)+"="+uriEncode(v))
		}
	}
	var hs strings.Builder
	for _, h := range strings.Split(signedHeaders, ";") {
		v := r.Header.Get(h)
		if h == "host" {
			v = r.Host
		}
		hs.WriteString(h + ":" + strings.Join(strings.Fields(v), " ") + "\n")
	}
	if presigned {
		payloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	}
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	canonical := strings.Join([]string{r.Method, path, strings.Join(qs, "&"), hs.String(), signedHeaders, payloadHash}, "\n")
	sum := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + date + "\n" + day + "/" + region + "/" + service + "/aws4_request\n" + hex.EncodeToString(sum[:])
	key := []byte("AWS4" + secret)
	for _, part := range []string{day, region, service, "aws4_request"} {
		key = mac(key, part)
	}
	return hex.EncodeToString(mac(key, toSign))
}

func mac(key []byte, s string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(s))
	return h.Sum(nil)
}

// uriEncode is SigV4's: every byte but A-Z a-z 0-9 - _ . ~ as %XX.
func uriEncode(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// VerifyEKSToken is aws-iam-authenticator's server side: it decodes the
// token, checks the presigned URL's host (one of stsHosts), action,
// signed headers, the cluster id and the date, then calls the URL (STS
// checks the signature) and returns the role the caller assumed.
func VerifyEKSToken(tok, cluster string, stsHosts []string) (string, error) {
	raw, ok := strings.CutPrefix(tok, "k8s-aws-v1.")
	if !ok {
		return "", fmt.Errorf("token is missing the k8s-aws-v1. prefix")
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		return "", fmt.Errorf("token is not unpadded base64url")
	}
	u, err := url.Parse(string(b))
	if err != nil || u.Scheme != "https" && !strings.HasPrefix(u.Host, "127.0.0.1:") {
		return "", fmt.Errorf("token is not an https URL")
	}
	okHost := false
	for _, h := range stsHosts {
		okHost = okHost || u.Host == h
	}
	if !okHost {
		return "", fmt.Errorf("unexpected hostname %q in pre-signed URL", u.Host)
	}
	q := u.Query()
	if q.Get("Action") != "GetCallerIdentity" {
		return "", fmt.Errorf("unexpected action parameter %q in pre-signed URL", q.Get("Action"))
	}
	if !strings.Contains(";"+q.Get("X-Amz-SignedHeaders")+";", ";x-k8s-aws-id;") {
		return "", fmt.Errorf("client did not sign the x-k8s-aws-id header in the pre-signed URL")
	}
	date, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		return "", fmt.Errorf("X-Amz-Date is missing")
	}
	if time.Since(date) > 15*time.Minute {
		return "", fmt.Errorf("X-Amz-Date parameter is expired (15 minute expiration) %s", date)
	}
	req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
	req.Header.Set("x-k8s-aws-id", cluster)
	req.Header.Set("Accept", "application/json")
	if u.Scheme == "https" {
		return "", fmt.Errorf("this verifier calls only the loopback fake")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("sts getCallerIdentity failed: %d %s", resp.StatusCode, data)
	}
	var out struct {
		GetCallerIdentityResponse struct{ GetCallerIdentityResult struct{ Arn string } }
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return "", err
	}
	arn := out.GetCallerIdentityResponse.GetCallerIdentityResult.Arn
	// arn:aws:sts::123456789012:assumed-role/<role>/<session> → the role.
	if f := strings.Split(arn, "/"); len(f) == 3 && strings.Contains(f[0], ":assumed-role") {
		return strings.Replace(strings.Replace(f[0], ":sts:", ":iam:", 1), ":assumed-role", ":role", 1) + "/" + f[1], nil
	}
	return arn, nil
}
