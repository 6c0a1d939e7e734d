//go:build !noverify

package verify

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/signature"
)

// cosignSignPredicate is the predicate cosign (2.6 with
// --new-bundle-format, and 3.x by default) signs images with: an in-toto
// statement whose subject is the image digest.
const cosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"

// verifier checks candidates against one policy for one digest.
type verifier struct {
	policy *Policy
	digest name.Digest
}

func (v verifier) check(c candidate) outcome {
	if c.bad != "" {
		return outcome{err: &InvalidSignatureError{Image: v.digest.String(), Reason: c.bad}}
	}
	if c.bundle != nil {
		return v.checkBundle(c)
	}
	return v.checkLegacy(c)
}

// want describes the policy's signer for messages.
func (p *Policy) want() string {
	switch p.Method {
	case CosignKey:
		return "key " + p.keyID
	case CosignKeyless:
		id := p.Identity
		if id == "" {
			id = "~" + p.IdentityRegexp
		}
		return id + " from issuer " + p.Issuer
	default:
		s := "a workflow of " + p.Repository
		if p.SignerWorkflow != "" {
			s = "workflow " + p.SignerWorkflow + " building " + p.Repository
		}
		return s + " (issuer " + p.Issuer + ")"
	}
}

// sgVerifier is sigstore-go's verifier for the policy: the public key alone
// for cosign-key (no timestamps or transparency log needed, as
// `cosign verify --key --insecure-ignore-tlog`); for certificates the
// trusted root, requiring a transparency-log entry and SCTs exactly when
// the root has logs to check them against (public-good has both; GitHub's
// own instance for private repositories only a timestamp authority).
func (p *Policy) sgVerifier() (*sgverify.Verifier, error) {
	if p.Method == CosignKey {
		sv, err := signature.LoadVerifier(p.key, crypto.SHA256)
		if err != nil {
			return nil, err
		}
		key := root.NewExpiringKey(sv, time.Time{}, time.Time{})
		tm := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })
		return sgverify.NewVerifier(tm, sgverify.WithNoObserverTimestamps())
	}
	opts := []sgverify.VerifierOption{sgverify.WithObserverTimestamps(1)}
	if len(p.trust.RekorLogs()) > 0 {
		opts = append(opts, sgverify.WithTransparencyLog(1))
	}
	if len(p.trust.CTLogs()) > 0 {
		opts = append(opts, sgverify.WithSignedCertificateTimestamps(1))
	}
	return sgverify.NewVerifier(p.trust, opts...)
}

// identity is the certificate identity sigstore-go must find, or the
// key-only option.
func (p *Policy) identity() (sgverify.PolicyOption, error) {
	if p.Method == CosignKey {
		return sgverify.WithKey(), nil
	}
	var re string
	if p.sanRE != nil {
		re = p.sanRE.String()
	}
	san, err := sgverify.NewSANMatcher(p.Identity, re)
	if err != nil {
		return nil, err
	}
	iss, err := sgverify.NewIssuerMatcher(p.issuer, "")
	if err != nil {
		return nil, err
	}
	id, err := sgverify.NewCertificateIdentity(san, iss, certificate.Extensions{})
	if err != nil {
		return nil, err
	}
	return sgverify.WithCertificateIdentity(id), nil
}

// checkBundle verifies a Sigstore bundle: a DSSE envelope whose in-toto
// subject must be the digest (sigstore-go checks it against
// WithArtifactDigest) and whose predicate type the policy names.
func (v verifier) checkBundle(c candidate) outcome {
	img := v.digest.String()
	var b bundle.Bundle
	if err := b.UnmarshalJSON(c.bundle); err != nil {
		return outcome{err: &InvalidSignatureError{Image: img, Reason: "the bundle does not parse: " + err.Error()}}
	}
	env, err := b.Envelope()
	if err != nil || env == nil {
		return outcome{skipped: "a bundle that is not a DSSE attestation"}
	}
	st, err := env.Statement()
	if err != nil {
		return outcome{err: &InvalidSignatureError{Image: img, Reason: "the bundle's statement does not parse: " + err.Error()}}
	}
	wantType := cosignSignPredicate
	if v.policy.Method == GitHubAttestation {
		wantType = v.policy.PredicateType
	}
	// Read before verification only to skip what the policy does not ask
	// for; the predicate type is checked again on the verified statement.
	if st.GetPredicateType() != wantType {
		return outcome{skipped: "predicate type " + st.GetPredicateType()}
	}
	if b.VerificationMaterial == nil || (v.policy.Method == CosignKey) != (b.VerificationMaterial.GetPublicKey() != nil) {
		if v.policy.Method == CosignKey {
			return outcome{skipped: "a keyless bundle"}
		}
		return outcome{skipped: "a bundle signed with a key"}
	}

	hexDigest := v.digest.DigestStr()
	raw, err := hex.DecodeString(strings.TrimPrefix(hexDigest, "sha256:"))
	if err != nil || !strings.HasPrefix(hexDigest, "sha256:") {
		return outcome{err: fmt.Errorf("verify: digest %s is not sha256", hexDigest)}
	}
	res, got, err := v.run(&b, sgverify.WithArtifactDigest("sha256", raw))
	if err != nil {
		return outcome{err: v.classify(err, got)}
	}
	if res.Statement == nil || res.Statement.GetPredicateType() != wantType {
		return outcome{err: &InvalidSignatureError{Image: img, Reason: "the verified statement lost its predicate type"}}
	}
	if err := v.checkRepository(res); err != nil {
		return outcome{err: err}
	}
	return outcome{result: Result{Method: v.policy.Method, Identity: v.signer(res), SignatureDigest: c.manifest}}
}

// checkRepository: GitHub's Fulcio puts the repository the workflow ran
// for in the SourceRepositoryURI extension. The SAN names the signer
// workflow, which for a reusable workflow lives in another repository, so
// only the extension proves the build was for the policy's repository.
func (v verifier) checkRepository(res *sgverify.VerificationResult) error {
	if v.policy.Method != GitHubAttestation {
		return nil
	}
	cert := res.Signature.Certificate
	want := "https://github.com/" + v.policy.Repository
	got := cert.SourceRepositoryURI
	sameRepo := v.policy.SignerWorkflow == "" || strings.HasPrefix(strings.ToLower(v.policy.SignerWorkflow), strings.ToLower(v.policy.Repository)+"/")
	switch {
	case got != "" && !strings.EqualFold(got, want):
		return &IdentityMismatchError{Image: v.digest.String(), Want: v.policy.want(), Got: cert.SubjectAlternativeName, Reason: "built for " + got}
	case got == "" && !sameRepo:
		return &IdentityMismatchError{Image: v.digest.String(), Want: v.policy.want(), Got: cert.SubjectAlternativeName,
			Reason: "the certificate does not name the source repository, and the signer workflow is in another one"}
	}
	return nil
}

// checkLegacy verifies a `.sig`-tag signature: cosign's simple-signing
// payload, signed as a blob, whose critical.image.docker-manifest-digest
// must be the digest being pulled (else a signature of another image,
// copied under this digest's tag, would pass).
func (v verifier) checkLegacy(c candidate) outcome {
	img := v.digest.String()
	keyless := v.policy.Method == CosignKeyless
	if keyless && len(c.cert) == 0 {
		return outcome{skipped: "a signature made with a key"}
	}
	if !keyless && len(c.cert) != 0 {
		return outcome{skipped: "a keyless signature"}
	}
	ent := &legacyEntity{payload: c.payload, sig: c.sig}
	if keyless {
		block, _ := pem.Decode(c.cert)
		if block == nil {
			return outcome{err: &InvalidSignatureError{Image: img, Reason: "the certificate annotation is not PEM"}}
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return outcome{err: &InvalidSignatureError{Image: img, Reason: "the certificate does not parse: " + err.Error()}}
		}
		ent.cert = cert
		if len(c.rekorBundle) > 0 {
			if ent.entry, err = rekorEntry(c.rekorBundle); err != nil {
				return outcome{err: &InvalidSignatureError{Image: img, Reason: "the Rekor bundle annotation: " + err.Error()}}
			}
		}
	}
	res, got, err := v.run(ent, sgverify.WithArtifact(bytes.NewReader(c.payload)))
	if err != nil {
		return outcome{err: v.classify(err, got)}
	}
	var payload struct {
		Critical struct {
			Image struct {
				Digest string `json:"docker-manifest-digest"`
			} `json:"image"`
			Type string `json:"type"`
		} `json:"critical"`
	}
	if err := json.Unmarshal(c.payload, &payload); err != nil {
		return outcome{err: &InvalidSignatureError{Image: img, Reason: "the signed payload is not JSON: " + err.Error()}}
	}
	if payload.Critical.Type != "cosign container image signature" {
		return outcome{err: &InvalidSignatureError{Image: img, Reason: fmt.Sprintf("the signed payload is a %q, not a cosign container image signature", payload.Critical.Type)}}
	}
	if payload.Critical.Image.Digest != v.digest.DigestStr() {
		return outcome{err: &InvalidSignatureError{Image: img, Reason: "the signature is for " + payload.Critical.Image.Digest + ", not this digest"}}
	}
	return outcome{result: Result{Method: v.policy.Method, Identity: v.signer(res), SignatureDigest: c.manifest}}
}

// run verifies ent with sigstore-go. got is the signer's SAN when the
// certificate could be read, for a mismatch message.
func (v verifier) run(ent sgverify.SignedEntity, artifact sgverify.ArtifactPolicyOption) (*sgverify.VerificationResult, string, error) {
	var got string
	if vc, err := ent.VerificationContent(); err == nil && vc.Certificate() != nil {
		if s, err := certificate.SummarizeCertificate(vc.Certificate()); err == nil {
			got = s.SubjectAlternativeName
			if s.Issuer != "" {
				got += " from issuer " + s.Issuer
			}
		}
	}
	sv, err := v.policy.sgVerifier()
	if err != nil {
		return nil, got, err
	}
	id, err := v.policy.identity()
	if err != nil {
		return nil, got, err
	}
	res, err := sv.Verify(ent, sgverify.NewPolicy(artifact, id))
	return res, got, err
}

func (v verifier) signer(res *sgverify.VerificationResult) string {
	if res.Signature != nil && res.Signature.Certificate != nil {
		return res.Signature.Certificate.SubjectAlternativeName
	}
	return "key " + v.policy.keyID
}

// rekorEntry reads cosign's dev.sigstore.cosign/bundle annotation: the
// Rekor entry with its signed entry timestamp (the inclusion promise that
// gives keyless signatures a trusted time).
func rekorEntry(raw []byte) (*tlog.Entry, error) {
	var rb struct {
		SignedEntryTimestamp []byte
		Payload              struct {
			Body           string `json:"body"`
			IntegratedTime int64  `json:"integratedTime"`
			LogIndex       int64  `json:"logIndex"`
			LogID          string `json:"logID"`
		}
	}
	if err := json.Unmarshal(raw, &rb); err != nil {
		return nil, err
	}
	body, err := base64.StdEncoding.DecodeString(rb.Payload.Body)
	if err != nil {
		return nil, fmt.Errorf("body: %v", err)
	}
	logID, err := hex.DecodeString(rb.Payload.LogID)
	if err != nil {
		return nil, fmt.Errorf("logID: %v", err)
	}
	return tlog.NewEntry(body, rb.Payload.IntegratedTime, rb.Payload.LogIndex, logID, rb.SignedEntryTimestamp, nil)
}

// legacyEntity presents a `.sig`-tag signature to sigstore-go as a message
// signature over the payload, with the certificate (keyless) or a key hint
// (the policy's key is the only one trusted), and the Rekor entry if any.
type legacyEntity struct {
	payload, sig []byte
	cert         *x509.Certificate
	entry        *tlog.Entry
}

func (e *legacyEntity) HasInclusionPromise() bool {
	return e.entry != nil && e.entry.HasInclusionPromise()
}
func (e *legacyEntity) HasInclusionProof() bool { return false }
func (e *legacyEntity) Timestamps() ([][]byte, error) {
	return nil, nil
}
func (e *legacyEntity) TlogEntries() ([]*tlog.Entry, error) {
	if e.entry == nil {
		return nil, nil
	}
	return []*tlog.Entry{e.entry}, nil
}

// Version "v0.1" is the oldest bundle version, which makes sigstore-go
// accept the hash cosign used with the key's algorithm (its "compat" mode).
func (e *legacyEntity) Version() (string, error) { return "v0.1", nil }

func (e *legacyEntity) VerificationContent() (sgverify.VerificationContent, error) {
	if e.cert != nil {
		return bundle.NewCertificate(e.cert), nil
	}
	return &bundle.PublicKey{}, nil
}

func (e *legacyEntity) SignatureContent() (sgverify.SignatureContent, error) {
	sum := sha256.Sum256(e.payload)
	return bundle.NewMessageSignature(sum[:], "SHA2_256", e.sig), nil
}
