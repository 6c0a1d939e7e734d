//go:build !noverify

package action

import (
	"context"
	"encoding/json"
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
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
	"github.com/ghcr-pull/ghcr-pull/internal/verify/verifytest"
)

// cosignKey is a P-256 signer and its public key in PEM, as the
// verify-key input takes it.
func cosignKey(t *testing.T) (signature.Signer, string) {
	t.Helper()
	sv, pub, err := verifytest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return sv, pub
}

// signImage attaches a cosign key signature of d, made with sv, under d's
// .sig tag, and returns the digest of the signature manifest.
func signImage(t *testing.T, d name.Digest, sv signature.Signer, opts ...remote.Option) string {
	t.Helper()
	l, err := verifytest.KeySignature(sv, verifytest.SimpleSigning(d.Context().String(), d.DigestStr()))
	if err != nil {
		t.Fatal(err)
	}
	m, err := verifytest.WriteLegacy(d, []verifytest.Legacy{l}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// pushRandom pushes a random image as tag and returns its digest.
func pushRandom(t *testing.T, tag string, opts ...remote.Option) name.Digest {
	t.Helper()
	img, _ := random.Image(128, 1)
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatal(err)
	}
	dg, _ := img.Digest()
	return ref.Context().Digest(dg.String())
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
	push := func(repo string) name.Digest { return pushRandom(t, host+"/"+repo+":1") }
	key, keyPEM := cosignKey(t)
	other, _ := cosignKey(t)
	policy, err := verify.ParsePolicy(func(n verify.Setting) string {
		return map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: keyPEM}[n]
	})
	if err != nil || policy == nil {
		t.Fatalf("policy: %v", err)
	}
	if verifierFor(nil, nil) != nil {
		t.Error("a hook without a policy: pull would verify with nothing")
	}
	hook := verifierFor(policy, nil)

	unsigned := push("acme/unsigned")
	v, err := hook(context.Background(), unsigned, registryauth.Anonymous)
	var none *verify.NoSignatureError
	if !errors.As(err, &none) || v != (pull.Verification{}) {
		t.Errorf("unsigned image: %+v, %v; want no verification and a NoSignatureError", v, err)
	}

	forged := push("acme/forged")
	signImage(t, forged, other)
	v, err = hook(context.Background(), forged, registryauth.Anonymous)
	var invalid *verify.InvalidSignatureError
	if !errors.As(err, &invalid) || v != (pull.Verification{}) {
		t.Errorf("image signed by another key: %+v, %v; want no verification and an InvalidSignatureError", v, err)
	}

	signed := push("acme/signed")
	sigManifest := signImage(t, signed, key)
	v, err = hook(context.Background(), signed, registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"})
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

// results names each verification failure's class (unsigned,
// invalid-signature, signer-mismatch) for a deploy job to branch on, and
// the "What to do" lines under it speak of the signature: also after the
// credentials were refused and the anonymous fallback read a public image,
// where the rejection is not why the image failed.
func TestResultsNameVerificationClasses(t *testing.T) {
	reg := startRegistry(t)
	admin := remote.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"})
	push := func(repo string) name.Digest { return pushRandom(t, reg.host+"/"+repo+":1", admin) }
	key, keyPEM := cosignKey(t)
	other, _ := cosignKey(t)
	ss, err := verifytest.New()
	if err != nil {
		t.Fatal(err)
	}
	trustedRoot, err := ss.TrustedRoot()
	if err != nil {
		t.Fatal(err)
	}
	const (
		workflow = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
		fork     = "https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main"
	)
	keyPolicy := map[string]string{"verify": "cosign-key", "verify-key": keyPEM}
	keylessPolicy := map[string]string{"verify": "cosign-keyless", "verify-identity": workflow,
		"verify-issuer": verify.GitHubIssuer, "verify-trusted-root": string(trustedRoot)}

	forged := push("acme/forged")
	signImage(t, forged, other, admin)
	byFork := push("acme/fork-signed")
	l, err := ss.LegacyKeyless(fork, verify.GitHubIssuer, verifytest.SimpleSigning(byFork.Context().String(), byFork.DigestStr()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifytest.WriteLegacy(byFork, []verifytest.Legacy{l}, admin); err != nil {
		t.Fatal(err)
	}
	signed := push("acme/signed")
	signImage(t, signed, key, admin)

	for _, tt := range []struct {
		name, repo, password string
		policy               map[string]string
		want, advice         string
	}{
		{"unsigned", "acme/private", testPassword, keyPolicy, "unsigned", "no signature the verify policy accepts"},
		{"unsigned, after the credentials were refused", "acme/public", "wrong-password", keyPolicy, "unsigned", "no signature the verify policy accepts"},
		{"signed by another key", "acme/forged", testPassword, keyPolicy, "invalid-signature", "verify-key is the public half"},
		{"signed by another workflow", "acme/fork-signed", testPassword, keylessPolicy, "signer-mismatch", "not by the signer the policy names"},
		{"signed", "acme/signed", testPassword, keyPolicy, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := map[string]string{"image": reg.host + "/" + tt.repo + ":1", "username": testUser, "password": tt.password,
				"destination": "none", "retries": "0"}
			for k, v := range tt.policy {
				in[k] = v
			}
			s := runStep(t, in, nil)
			var results []ResultJSON
			if err := json.Unmarshal([]byte(s.outputs["results"]), &results); err != nil || len(results) != 1 {
				t.Fatalf("results %q: %v\n%s", s.outputs["results"], err, s.stdout)
			}
			r := results[0]
			if r.ErrorClass != tt.want {
				t.Errorf("error_class %q, want %q (error %q)", r.ErrorClass, tt.want, r.Error)
			}
			if tt.want == "" {
				if s.code != ExitOK || r.VerifyMethod != "cosign-key" {
					t.Errorf("signed image: exit %d, result %+v", s.code, r)
				}
				return
			}
			if s.code != ExitFailed {
				t.Errorf("exit %d, want %d", s.code, ExitFailed)
			}
			_, advice, found := strings.Cut(s.summary, "What to do")
			if !found || !strings.Contains(advice, tt.advice) {
				t.Errorf("the summary does not advise on the signature (%q):\n%s", tt.advice, s.summary)
			}
			for _, wrong := range []string{"read access", "username and password", "private"} {
				if strings.Contains(advice, wrong) {
					t.Errorf("the advice speaks of access (%q), not of the signature:\n%s", wrong, advice)
				}
			}
		})
	}
}

// The verify policy's errors name the action's inputs, as users knew them
// before the policy's settings got names of their own: action names them
// at its one boundary (named), every setting has an input of action.yml.
func TestVerifyErrorsNameInputs(t *testing.T) {
	md := testMetadata(t)
	declared := map[string]bool{}
	for _, in := range md.Inputs {
		declared[in.Name] = true
	}
	for _, s := range verify.Settings {
		if !declared[verifyInputs[s]] {
			t.Errorf("setting %s: %q is no input of action.yml", s, verifyInputs[s])
		}
	}
	_, pub := cosignKey(t)
	for _, tt := range []struct {
		in   map[string]string
		want string
	}{
		{map[string]string{"verify-key": pub},
			`input "verify-key": is set but verification is off (set verify to cosign-key, cosign-keyless or github-attestation)`},
		{map[string]string{"verify": "cosign-key", "verify-key": pub, "verify-identity": "x"},
			`input "verify-identity": does not apply to verify: cosign-key (remove it, or pick the method it belongs to)`},
		{map[string]string{"verify": "cosign-key"},
			`input "verify-key": is required for verify: cosign-key (give the PEM public key (cosign.pub) inline or as a file path)`},
		{map[string]string{"verify": "cosign-keyless", "verify-issuer": verify.GitHubIssuer},
			`input "verify-identity": verify: cosign-keyless needs the signer's identity (set verify-identity (e.g. https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main) or verify-identity-regexp)`},
		{map[string]string{"verify": "cosign-keyless", "verify-identity": "a", "verify-identity-regexp": "^a$", "verify-issuer": verify.GitHubIssuer},
			`input "verify-identity-regexp": is set together with verify-identity (set only one of them)`},
		{map[string]string{"verify": "github-attestation", "verify-repository": "octo"},
			`input "verify-repository": "octo" is not owner/name (name the repository whose workflow built the image, e.g. octo-org/app)`},
	} {
		tt.in["image"] = "ghcr.io/acme/app:1"
		_, err := ParseConfig(getter(tt.in), md)
		if err == nil || err.Error() != tt.want {
			t.Errorf("error\n%v\nwant\n%s", err, tt.want)
		}
	}
}
