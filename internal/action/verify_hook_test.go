//go:build !noverify

package action

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
	"github.com/ghcr-pull/ghcr-pull/internal/verify/verifytest"
)

// cosignKey is a P-256 signer and its public key in PEM, as the
// verify-key input takes it.
func cosignKey(t *testing.T) (signature.Signer, string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return sv, string(pub)
}

// signImage attaches a cosign key signature of d, made with sv, under d's
// .sig tag, and returns the digest of the signature manifest.
func signImage(t *testing.T, d name.Digest, sv signature.Signer, opts ...remote.Option) string {
	t.Helper()
	payload := verifytest.SimpleSigning(d.Context().String(), d.DigestStr())
	sig, err := sv.SignMessage(bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	m, err := verifytest.WriteLegacy(d, []verifytest.Legacy{{Payload: payload, Annotations: map[string]string{
		"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig)}}}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Guarantee: the action's verification hook fails an image the policy does
// not accept (no signature at all, or a signature by another key) and only
// reports a verification for a signature that verified. pull fails an
// image whose hook returned an error and pulls nothing, so a hook that
// turned "no signature" into success would let an unsigned image through.
func TestVerifierHook(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	push := func(repo string) name.Digest {
		img, _ := random.Image(128, 1)
		tag, _ := name.NewTag(host + "/" + repo + ":1")
		if err := remote.Write(tag, img); err != nil {
			t.Fatal(err)
		}
		dg, _ := img.Digest()
		return tag.Context().Digest(dg.String())
	}
	key, keyPEM := cosignKey(t)
	other, _ := cosignKey(t)
	policy, err := verify.ParsePolicy(func(n string) string {
		return map[string]string{"verify": "cosign-key", "verify-key": keyPEM}[n]
	})
	if err != nil || policy == nil {
		t.Fatalf("policy: %v", err)
	}
	if verifierFor(nil, nil) != nil {
		t.Error("a hook without a policy: pull would verify with nothing")
	}
	hook := verifierFor(policy, nil)

	unsigned := push("acme/unsigned")
	v, err := hook(context.Background(), unsigned, ghcr.Anonymous)
	var none *verify.NoSignatureError
	if !errors.As(err, &none) || v != (pull.Verification{}) {
		t.Errorf("unsigned image: %+v, %v; want no verification and a NoSignatureError", v, err)
	}

	forged := push("acme/forged")
	signImage(t, forged, other)
	v, err = hook(context.Background(), forged, ghcr.Anonymous)
	var invalid *verify.InvalidSignatureError
	if !errors.As(err, &invalid) || v != (pull.Verification{}) {
		t.Errorf("image signed by another key: %+v, %v; want no verification and an InvalidSignatureError", v, err)
	}

	signed := push("acme/signed")
	sigManifest := signImage(t, signed, key)
	v, err = hook(context.Background(), signed, ghcr.Credentials{Mode: ghcr.AuthToken, Username: "u", Password: "p"})
	if err != nil {
		t.Fatalf("signed image: %v", err)
	}
	if v.Method != string(verify.CosignKey) || !strings.Contains(v.Identity, "sha256:") || v.SignatureDigest != sigManifest || v.Anonymous {
		t.Errorf("signed image: verification %+v, want cosign-key, the key's fingerprint and signature %s", v, sigManifest)
	}
}

// The same through the whole step: verify on an unsigned image fails the
// step with nothing resolved in the outputs; signed, the outputs say by
// whom.
func TestStepVerifiesBeforeResolving(t *testing.T) {
	reg := startRegistry(t)
	key, keyPEM := cosignKey(t)
	in := map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": testPassword,
		"destination": "none", "verify": "cosign-key", "verify-key": keyPEM, "retries": "0"}
	s := runStep(t, in, nil)
	if s.code != ExitFailed {
		t.Fatalf("unsigned image: exit %d, want %d\n%s", s.code, ExitFailed, s.stdout)
	}
	for _, o := range []string{"digest", "image-ref", "verified", "signature-digest", "auth-mode"} {
		if s.outputs[o] != "" {
			t.Errorf("unsigned image: output %s = %q, want empty", o, s.outputs[o])
		}
	}
	if !strings.Contains(s.stdout, "no cosign-key signature found") {
		t.Errorf("the log does not say the signature is missing:\n%s", s.stdout)
	}

	ref, _ := name.ParseReference(reg.host + "/acme/private:1")
	desc, err := remote.Head(ref, remote.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"}))
	if err != nil {
		t.Fatal(err)
	}
	d := ref.Context().Digest(desc.Digest.String())
	sig := signImage(t, d, key, remote.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"}))
	s = runStep(t, in, nil)
	if s.code != ExitOK {
		t.Fatalf("signed image: exit %d\n%s", s.code, s.stdout)
	}
	if s.outputs["digest"] != d.DigestStr() || s.outputs["signature-digest"] != sig || !strings.HasPrefix(s.outputs["verified"], "cosign-key: ") {
		t.Errorf("signed image: outputs %v", s.outputs)
	}
}
