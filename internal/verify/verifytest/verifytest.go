// Package verifytest makes signatures for tests of internal/verify and the
// end-to-end suite: keyless signatures and attestation bundles from
// sigstore-go's VirtualSigstore (a local Fulcio CA, Rekor log and timestamp
// authority) with the trusted_root.json that trusts it, cosign's `.sig`
// signatures, and Sigstore bundles attached as OCI referrers with
// go-containerregistry. Only tests import it.
package verifytest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"
)

// BundleMediaType is the Sigstore bundle v0.3 media type, used as the
// referrer's artifact type and its layer's media type.
const BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"

// CosignSignPredicate is the predicate of cosign's new-format image signatures.
const CosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"

// Sigstore is a private Sigstore instance living in memory.
type Sigstore struct {
	vs *ca.VirtualSigstore
}

// New starts a VirtualSigstore.
func New() (*Sigstore, error) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		return nil, err
	}
	return &Sigstore{vs: vs}, nil
}

// TrustedRoot is the trusted_root.json for this instance: its Fulcio CA,
// timestamp authority and Rekor log. It lists no CT log: VirtualSigstore's
// certificates carry no SCTs.
func (s *Sigstore) TrustedRoot() ([]byte, error) {
	// VirtualSigstore keys its logs by the hex log ID but stores that hex
	// text as the ID; a trusted_root.json carries the raw key ID.
	logs := map[string]*root.TransparencyLog{}
	for id, l := range s.vs.RekorLogs() {
		raw, err := hex.DecodeString(id)
		if err != nil {
			return nil, err
		}
		c := *l
		c.ID = raw
		logs[id] = &c
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, s.vs.FulcioCertificateAuthorities(), nil,
		s.vs.TimestampingAuthorities(), logs)
	if err != nil {
		return nil, err
	}
	return tr.MarshalJSON()
}

// Statement is an in-toto statement about digest ("sha256:<hex>").
func Statement(digest, predicateType string) []byte {
	alg, hexDigest, _ := strings.Cut(digest, ":")
	b, _ := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{map[string]any{"name": "image", "digest": map[string]string{alg: hexDigest}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{"buildDefinition": map[string]any{"buildType": "test"}},
	})
	return b
}

// Bundle signs statement as identity (the certificate's SAN) of issuer and
// returns the Sigstore bundle v0.3 JSON: certificate, DSSE envelope, Rekor
// entry with inclusion proof and promise, and an RFC 3161 timestamp.
func (s *Sigstore) Bundle(identity, issuer string, statement []byte) ([]byte, error) {
	ent, err := s.vs.AttestAtTime(identity, issuer, statement, nowPlus5(), true)
	if err != nil {
		return nil, err
	}
	vc, _ := ent.VerificationContent()
	sc, _ := ent.SignatureContent()
	env := sc.EnvelopeContent().RawEnvelope()
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, err
	}
	sig, err := base64.StdEncoding.DecodeString(env.Signatures[0].Sig)
	if err != nil {
		return nil, err
	}
	entries, _ := ent.TlogEntries()
	tle, err := s.withPromise(entries[0], "dsse", "0.0.1")
	if err != nil {
		return nil, err
	}
	stamps, _ := ent.Timestamps()
	var ts []*protocommon.RFC3161SignedTimestamp
	for _, t := range stamps {
		ts = append(ts, &protocommon.RFC3161SignedTimestamp{SignedTimestamp: t})
	}
	pb := &protobundle.Bundle{
		MediaType: BundleMediaType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content:                   &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: vc.Certificate().Raw}},
			TlogEntries:               []*protorekor.TransparencyLogEntry{tle},
			TimestampVerificationData: &protobundle.TimestampVerificationData{Rfc3161Timestamps: ts},
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload: payload, PayloadType: env.PayloadType,
			Signatures: []*protodsse.Signature{{Sig: sig, Keyid: env.Signatures[0].KeyID}},
		}},
	}
	return protojson.Marshal(pb)
}

// withPromise returns the entry as a proto with its signed entry timestamp,
// which tlog.Entry keeps to itself; the log's key re-signs the same payload.
func (s *Sigstore) withPromise(e *tlog.Entry, kind, version string) (*protorekor.TransparencyLogEntry, error) {
	tle := e.TransparencyLogEntry()
	set, err := s.vs.RekorSignPayload(tlog.RekorPayload{
		Body:           base64.StdEncoding.EncodeToString(tle.CanonicalizedBody),
		IntegratedTime: tle.IntegratedTime,
		LogIndex:       tle.LogIndex,
		LogID:          hex.EncodeToString(tle.LogId.KeyId),
	})
	if err != nil {
		return nil, err
	}
	tle.KindVersion = &protorekor.KindVersion{Kind: kind, Version: version}
	tle.InclusionPromise = &protorekor.InclusionPromise{SignedEntryTimestamp: set}
	return tle, nil
}

// Legacy is a cosign `.sig` layer: payload, signature and annotations.
type Legacy struct {
	Payload     []byte
	Annotations map[string]string
}

// NewKey is a P-256 cosign key pair: the signer and the public key in PEM,
// as verify-key takes it.
func NewKey() (signature.SignerVerifier, string, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	sv, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, "", err
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	return sv, string(pub), err
}

// KeySignature is a cosign key signature of payload, as `cosign sign
// --key` stores it (for WriteLegacy).
func KeySignature(sv signature.Signer, payload []byte) (Legacy, error) {
	sig, err := sv.SignMessage(bytes.NewReader(payload))
	if err != nil {
		return Legacy{}, err
	}
	return Legacy{Payload: payload, Annotations: map[string]string{
		"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig),
	}}, nil
}

// SimpleSigning is cosign's payload for an image signature.
func SimpleSigning(ref, digest string) []byte {
	b, _ := json.Marshal(map[string]any{
		"critical": map[string]any{
			"identity": map[string]string{"docker-reference": ref},
			"image":    map[string]string{"docker-manifest-digest": digest},
			"type":     "cosign container image signature",
		},
		"optional": nil,
	})
	return b
}

// LegacyKeyless signs payload as identity of issuer the way cosign 2's
// keyless signing stores it: the signature, the certificate and the Rekor
// bundle (entry plus signed entry timestamp) as layer annotations.
func (s *Sigstore) LegacyKeyless(identity, issuer string, payload []byte) (Legacy, error) {
	ent, err := s.vs.Sign(identity, issuer, payload)
	if err != nil {
		return Legacy{}, err
	}
	vc, _ := ent.VerificationContent()
	sc, _ := ent.SignatureContent()
	certPEM, err := cryptoutils.MarshalCertificateToPEM(vc.Certificate())
	if err != nil {
		return Legacy{}, err
	}
	entries, _ := ent.TlogEntries()
	tle, err := s.withPromise(entries[0], "hashedrekord", "0.0.1")
	if err != nil {
		return Legacy{}, err
	}
	rekor, _ := json.Marshal(map[string]any{
		"SignedEntryTimestamp": tle.InclusionPromise.SignedEntryTimestamp,
		"Payload": map[string]any{
			"body":           base64.StdEncoding.EncodeToString(tle.CanonicalizedBody),
			"integratedTime": tle.IntegratedTime,
			"logIndex":       tle.LogIndex,
			"logID":          hex.EncodeToString(tle.LogId.KeyId),
		},
	})
	return Legacy{Payload: payload, Annotations: map[string]string{
		"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sc.Signature()),
		"dev.sigstore.cosign/certificate":    string(certPEM),
		"dev.sigstore.cosign/bundle":         string(rekor),
	}}, nil
}

// WriteLegacy pushes sigs as the `sha256-<hex>.sig` tag of digest, as cosign
// does, and returns the signature manifest's digest.
func WriteLegacy(digest name.Digest, sigs []Legacy, opts ...remote.Option) (string, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, s := range sigs {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:       static.NewLayer(s.Payload, "application/vnd.dev.cosign.simplesigning.v1+json"),
			Annotations: s.Annotations,
		})
		if err != nil {
			return "", err
		}
	}
	_, hexDigest, _ := strings.Cut(digest.DigestStr(), ":")
	if err := remote.Write(digest.Context().Tag("sha256-"+hexDigest+".sig"), img, opts...); err != nil {
		return "", err
	}
	d, err := img.Digest()
	return d.String(), err
}

// AttachBundle pushes bundle as an OCI referrer of subject, as
// actions/attest-build-provenance (push-to-registry) and cosign
// --new-bundle-format do: an OCI manifest with artifactType
// BundleMediaType, an empty config, the bundle as its one layer. On a
// registry without the referrers API go-containerregistry also updates the
// `sha256-<hex>` referrers tag. It returns the referrer manifest's digest.
func AttachBundle(subject name.Digest, bundle []byte, predicateType string, opts ...remote.Option) (string, error) {
	desc, err := remote.Head(subject, opts...)
	if err != nil {
		return "", err
	}
	layer := static.NewLayer(bundle, BundleMediaType)
	config := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	for _, l := range []v1.Layer{config, layer} {
		if err := remote.WriteLayer(subject.Context(), l, opts...); err != nil {
			return "", err
		}
	}
	ld, _ := layer.Digest()
	cd, _ := config.Digest()
	m := referrer{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  BundleMediaType,
		Config:        v1.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: cd, Size: 2},
		Layers:        []v1.Descriptor{{MediaType: BundleMediaType, Digest: ld, Size: int64(len(bundle))}},
		Subject:       &v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size},
		Annotations: map[string]string{
			"dev.sigstore.bundle.content":       "dsse-envelope",
			"dev.sigstore.bundle.predicateType": predicateType,
		},
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return "", err
	}
	if err := remote.Put(subject.Context().Digest(h.String()), rawManifest(raw), opts...); err != nil {
		return "", err
	}
	return h.String(), nil
}

type referrer struct {
	SchemaVersion int64             `json:"schemaVersion"`
	MediaType     types.MediaType   `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        v1.Descriptor     `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Subject       *v1.Descriptor    `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
}

type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error)        { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// nowPlus5 is the integrated time VirtualSigstore's own Attest uses: its
// leaf certificates are valid from now for ten minutes.
func nowPlus5() time.Time { return time.Now().Add(5 * time.Minute) }
