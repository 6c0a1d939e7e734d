package oidc

import (
	"context"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc/oidctest"
)

const eksRole = "arn:aws:iam::123456789012:role/deploy"

func decodeEKSToken(t *testing.T, tok string) *url.URL {
	t.Helper()
	raw, ok := strings.CutPrefix(tok, EKSTokenPrefix)
	if !ok {
		t.Fatalf("token %q lacks the prefix", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil {
		t.Fatalf("not unpadded base64url: %v", err)
	}
	u, err := url.Parse(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// The presigned URL is aws-iam-authenticator's: the regional STS host,
// GetCallerIdentity, X-Amz-Expires=60, the cluster's name a signed header.
func TestPresignEKSToken(t *testing.T) {
	c := Config{}
	client := c.stsClient("eu-west-1", credentials.StaticCredentialsProvider{Value: aws.Credentials{AccessKeyID: "ASIAX", SecretAccessKey: "s", SessionToken: "st"}})
	tok, err := PresignEKSToken(context.Background(), client, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(tok, "=") {
		t.Errorf("token is padded: %s", tok)
	}
	u := decodeEKSToken(t, tok)
	q := u.Query()
	if u.Scheme != "https" || u.Host != "sts.eu-west-1.amazonaws.com" || q.Get("Action") != "GetCallerIdentity" || q.Get("Version") != "2011-06-15" {
		t.Errorf("URL %s: want https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity", u)
	}
	if q.Get("X-Amz-Expires") != "60" || q.Get("X-Amz-SignedHeaders") != "host;x-k8s-aws-id" || q.Get("X-Amz-Security-Token") != "st" ||
		!strings.HasPrefix(q.Get("X-Amz-Credential"), "ASIAX/") || !strings.HasSuffix(q.Get("X-Amz-Credential"), "/eu-west-1/sts/aws4_request") {
		t.Errorf("presign query %v", q)
	}
	if q.Get(EKSClusterID) != "" {
		t.Errorf("the cluster id is a signed header, not a query parameter")
	}
}

type eksWorld struct {
	fake     *oidctest.AWS
	eks      *EKS
	masked   []string
	idTokens int
}

func newEKSWorld(t *testing.T, cluster string) *eksWorld {
	w := &eksWorld{fake: oidctest.NewAWS("eu-west-1")}
	t.Cleanup(w.fake.Close)
	w.fake.Trust = func(role, jwt string) error {
		if role != eksRole || audOf(t, jwt) != "sts.amazonaws.com" {
			return errors.New("not trusted")
		}
		return nil
	}
	env := map[string]string{"AWS_ENDPOINT_URL_STS": w.fake.Server.URL, EnvEKS: w.fake.Server.URL}
	c := Config{AWSRoleARN: eksRole, AWSRegion: "eu-west-1", Getenv: func(k string) string { return env[k] }}
	var err error
	w.eks, err = NewEKS(c, cluster, func(_ context.Context, aud string) (string, error) { w.idTokens++; return fakeJWT(aud), nil },
		func(s string) { w.masked = append(w.masked, s) })
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *eksWorld) isMasked(s string) bool {
	for _, m := range w.masked {
		if m == s {
			return true
		}
	}
	return false
}

// A token verifies as aws-iam-authenticator verifies it, against an STS
// that checks the signature; a token for another cluster does not.
func TestEKSTokenVerifies(t *testing.T) {
	w := newEKSWorld(t, "prod")
	host := strings.TrimPrefix(w.fake.Server.URL, "http://")
	tok, exp, err := w.eks.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(exp); d < 13*time.Minute || d > EKSTokenLife {
		t.Errorf("token used for %s, want 14 minutes", d)
	}
	if !w.isMasked(tok) {
		t.Errorf("the token was not masked")
	}
	role, err := oidctest.VerifyEKSToken(tok, "prod", []string{host})
	if err != nil || role != eksRole {
		t.Fatalf("verify: %q, %v", role, err)
	}
	if _, err := oidctest.VerifyEKSToken(tok, "staging", []string{host}); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Errorf("a prod token verified for staging: %v", err)
	}
	if _, err := oidctest.VerifyEKSToken(tok, "prod", []string{"sts.eu-west-1.amazonaws.com"}); err == nil {
		t.Errorf("a token for another STS host verified")
	}
	// A signature over other bytes is refused: flip one character.
	u := decodeEKSToken(t, tok)
	q := u.Query()
	sig := []byte(q.Get("X-Amz-Signature"))
	sig[0] ^= 1
	q.Set("X-Amz-Signature", string(sig))
	u.RawQuery = q.Encode()
	if _, err := oidctest.VerifyEKSToken(EKSTokenPrefix+base64.RawURLEncoding.EncodeToString([]byte(u.String())), "prod", []string{host}); err == nil {
		t.Errorf("a forged signature verified")
	}
	// The session is reused: one ID token, one AssumeRole for two tokens.
	if _, _, err := w.eks.Token(context.Background()); err != nil || w.idTokens != 1 || w.fake.Assumed != 1 {
		t.Errorf("second token: %v; %d ID tokens, %d sessions", err, w.idTokens, w.fake.Assumed)
	}
}

// A session that ends within five minutes is replaced with a fresh ID
// token (GitHub's last minutes, not hours).
func TestEKSSessionRenewed(t *testing.T) {
	w := newEKSWorld(t, "prod")
	w.fake.SessionLife = 4 * time.Minute
	for range 2 {
		if _, _, err := w.eks.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if w.idTokens != 2 || w.fake.Assumed != 2 {
		t.Errorf("%d ID tokens, %d sessions for two tokens of a short session; want 2 and 2", w.idTokens, w.fake.Assumed)
	}
}

func TestEKSDescribe(t *testing.T) {
	w := newEKSWorld(t, "prod")
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	w.fake.Clusters["prod"] = oidctest.Cluster{Endpoint: "https://ABC.gr7.eu-west-1.eks.amazonaws.com", CA: ca, Private: true}
	_, err := w.eks.Describe(context.Background())
	var ee *ExchangeError
	if !errors.As(err, &ee) || ee.Status != 403 || !strings.Contains(ee.Fix, "eks:DescribeCluster") || !strings.Contains(ee.Fix, eksRole) {
		t.Fatalf("err = %v, want 403 naming eks:DescribeCluster and the role", err)
	}
	w.fake.Describers[eksRole] = true
	got, err := w.eks.Describe(context.Background())
	if err != nil || got.Endpoint != "https://ABC.gr7.eu-west-1.eks.amazonaws.com" || string(got.CA) != string(ca) || !got.Private {
		t.Fatalf("describe: %+v, %v", got, err)
	}
	w.eks.cluster = "gone"
	if _, err := w.eks.Describe(context.Background()); !errors.As(err, &ee) || ee.Status != 404 {
		t.Errorf("a missing cluster: %v", err)
	}
}

func TestNewEKSInputs(t *testing.T) {
	id := func(context.Context, string) (string, error) { return "", nil }
	for _, c := range []struct {
		cfg     Config
		cluster string
		input   string
	}{
		{Config{AWSRoleARN: "deploy", AWSRegion: "eu-west-1"}, "prod", "aws-role-arn"},
		{Config{AWSRoleARN: eksRole}, "prod", "aws-region"},
		{Config{AWSRoleARN: eksRole, AWSRegion: "eu-west-1"}, "", "kube-cluster"},
		{Config{AWSRoleARN: eksRole, AWSRegion: "eu-west-1"}, "prod/x", "kube-cluster"},
	} {
		_, err := NewEKS(c.cfg, c.cluster, id, func(string) {})
		var bi *failure.BadInput
		if !errors.As(err, &bi) || bi.Input != c.input {
			t.Errorf("%+v %q: err = %v, want %s", c.cfg, c.cluster, err, c.input)
		}
	}
}
