// Package ghcrsim is a registry front that answers auth the way GHCR does:
// a token endpoint that grants anonymous pulls of public repositories,
// answers Basic credentials it does not accept with 403 DENIED (or 401,
// switchable) even for public repositories, and issues ES256 JWTs that a
// real docker-registry (distribution 2.8, auth.token) accepts. It proxies
// /v2/ to that registry, or guards an in-process one itself. The demo and
// the end-to-end tests use it; it logs every request so tests can assert
// what reached the registry and with which credentials.
package ghcrsim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// signer issues and checks registry tokens.
type signer struct {
	key     *ecdsa.PrivateKey
	kid     string
	certPEM []byte
	issuer  string
	service string
}

func newSigner(issuer, service string) (*signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: issuer},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		IsCA:                  true,
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &signer{
		key:     key,
		kid:     libtrustKeyID(der),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}),
		issuer:  issuer,
		service: service,
	}, nil
}

// libtrustKeyID is the key id distribution looks up in its rootcertbundle:
// the first 240 bits of the SHA-256 of the PKIX public key, base32, in
// twelve groups of four.
func libtrustKeyID(pkixDER []byte) string {
	sum := sha256.Sum256(pkixDER)
	enc := base32.StdEncoding.EncodeToString(sum[:30])
	groups := make([]string, 0, 12)
	for i := 0; i < len(enc); i += 4 {
		groups = append(groups, enc[i:i+4])
	}
	return strings.Join(groups, ":")
}

// access is one grant in a token, as distribution reads it.
type access struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

type claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  string   `json:"aud"` // distribution 2.8 rejects an array here
	Expiry    int64    `json:"exp"`
	NotBefore int64    `json:"nbf"`
	IssuedAt  int64    `json:"iat"`
	ID        string   `json:"jti"`
	Access    []access `json:"access"`
}

var b64 = base64.RawURLEncoding

func (s *signer) issue(subject string, grants []access) (string, error) {
	now := time.Now()
	if grants == nil {
		grants = []access{}
	}
	header, _ := json.Marshal(map[string]string{"typ": "JWT", "alg": "ES256", "kid": s.kid})
	var jti [8]byte
	_, _ = rand.Read(jti[:])
	body, err := json.Marshal(claims{
		Issuer: s.issuer, Subject: subject, Audience: s.service,
		Expiry: now.Add(5 * time.Minute).Unix(), NotBefore: now.Add(-10 * time.Second).Unix(), IssuedAt: now.Unix(),
		ID: fmt.Sprintf("%x", jti), Access: grants,
	})
	if err != nil {
		return "", err
	}
	signing := b64.EncodeToString(header) + "." + b64.EncodeToString(body)
	digest := sha256.Sum256([]byte(signing))
	r, sig, err := ecdsa.Sign(rand.Reader, s.key, digest[:])
	if err != nil {
		return "", err
	}
	// JWS ES256 is raw r||s, 32 bytes each, not ASN.1 DER.
	raw := make([]byte, 64)
	r.FillBytes(raw[:32])
	sig.FillBytes(raw[32:])
	return signing + "." + b64.EncodeToString(raw), nil
}

// verify checks a token this signer issued and returns its grants.
func (s *signer) verify(token string) ([]access, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("malformed token")
	}
	raw, err := b64.DecodeString(parts[2])
	if err != nil || len(raw) != 64 {
		return nil, errors.New("malformed signature")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(&s.key.PublicKey, digest[:], new(big.Int).SetBytes(raw[:32]), new(big.Int).SetBytes(raw[32:])) {
		return nil, errors.New("bad signature")
	}
	body, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	var c claims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, err
	}
	if c.Audience != s.service || c.Issuer != s.issuer || time.Now().Unix() > c.Expiry {
		return nil, errors.New("token not valid here or expired")
	}
	return c.Access, nil
}
