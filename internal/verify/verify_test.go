//go:build !noverify

package verify_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
	"github.com/ghcr-pull/ghcr-pull/internal/verify/verifytest"
)

const (
	issuer   = verify.GitHubIssuer
	workflow = "https://github.com/octo/app/.github/workflows/release.yml@refs/heads/main"
)

// world is an in-process registry behind the GHCR-like front (token auth,
// fault injection) and two Sigstore instances: the trusted one and a rogue.
type world struct {
	front       *ghcrsim.Server
	host        string
	auth        authn.Authenticator
	ss, rogue   *verifytest.Sigstore
	trustedRoot string
	key, other  signature.SignerVerifier
	keyPEM      string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	front, err := ghcrsim.New(ghcrsim.Options{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))})
	if err != nil {
		t.Fatal(err)
	}
	front.AddUser("admin", "secret-pw", true, "*")
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	w := &world{front: front, host: strings.TrimPrefix(srv.URL, "http://"), auth: &authn.Basic{Username: "admin", Password: "secret-pw"}}
	if w.ss, err = verifytest.New(); err != nil {
		t.Fatal(err)
	}
	if w.rogue, err = verifytest.New(); err != nil {
		t.Fatal(err)
	}
	tr, err := w.ss.TrustedRoot()
	if err != nil {
		t.Fatal(err)
	}
	w.trustedRoot = string(tr)
	w.key, w.keyPEM = newKey(t)
	w.other, _ = newKey(t)
	return w
}

func newKey(t *testing.T) (signature.SignerVerifier, string) {
	t.Helper()
	sv, pub, err := verifytest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return sv, pub
}

func (w *world) push(t *testing.T, repo string) name.Digest {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(w.host + "/" + repo + ":1")
	if err := remote.Write(tag, img, remote.WithAuth(w.auth)); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return tag.Context().Digest(d.String())
}

// keySig is a cosign key signature of payload.
func keySig(t *testing.T, sv signature.Signer, payload []byte) verifytest.Legacy {
	t.Helper()
	l, err := verifytest.KeySignature(sv, payload)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func policy(t *testing.T, in map[verify.Setting]string) *verify.Policy {
	t.Helper()
	p, err := verify.ParsePolicy(func(n verify.Setting) string { return in[n] })
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The outcomes a case expects, in failure.ClassOf's words: the class
// results' error_class reports ("" passes).
const (
	pass        = ""
	noSignature = failure.Unsigned
	invalid     = failure.InvalidSignature
	mismatch    = failure.SignerMismatch
	denied      = "rejected"
)

func TestVerify(t *testing.T) {
	w := newWorld(t)
	keyPolicy := map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: w.keyPEM}
	keyless := func(id string) map[verify.Setting]string {
		return map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentity: id, verify.SettingIssuer: issuer, verify.SettingTrustedRoot: w.trustedRoot}
	}
	attest := func(extra ...string) map[verify.Setting]string {
		m := map[verify.Setting]string{verify.SettingMethod: "github-attestation", verify.SettingRepository: "octo/app", verify.SettingTrustedRoot: w.trustedRoot}
		for i := 0; i+1 < len(extra); i += 2 {
			m[verify.Setting(extra[i])] = extra[i+1]
		}
		return m
	}
	// sign attaches evidence to d and returns the digest of the manifest
	// that carries it ("" when nothing is expected to verify).
	type signer func(t *testing.T, d name.Digest) string
	legacy := func(sigs func(t *testing.T, d name.Digest) []verifytest.Legacy) signer {
		return func(t *testing.T, d name.Digest) string {
			m, err := verifytest.WriteLegacy(d, sigs(t, d), remote.WithAuth(w.auth))
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	payload := func(d name.Digest) []byte { return verifytest.SimpleSigning(d.Context().String(), d.DigestStr()) }
	bundleOf := func(ss *verifytest.Sigstore, id, predicate string, subject func(d name.Digest) string, mutate func([]byte) []byte) signer {
		return func(t *testing.T, d name.Digest) string {
			b, err := ss.Bundle(id, issuer, verifytest.Statement(subject(d), predicate))
			if err != nil {
				t.Fatal(err)
			}
			if mutate != nil {
				b = mutate(b)
			}
			m, err := verifytest.AttachBundle(d, b, predicate, remote.WithAuth(w.auth))
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	self := func(d name.Digest) string { return d.DigestStr() }
	otherDigest := func(d name.Digest) string { return "sha256:" + strings.Repeat("ab", 32) }

	cases := []struct {
		name   string
		policy map[verify.Setting]string
		sign   signer
		faults []ghcrsim.Fault
		want   string
	}{
		{"key: signed with the key", keyPolicy, legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			return []verifytest.Legacy{keySig(t, w.key, payload(d))}
		}), nil, pass},
		{"key: a second signature by another key does not matter", keyPolicy, legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			return []verifytest.Legacy{keySig(t, w.other, payload(d)), keySig(t, w.key, payload(d))}
		}), nil, pass},
		{"key: unsigned", keyPolicy, nil, nil, noSignature},
		{"key: signed by another key", keyPolicy, legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			return []verifytest.Legacy{keySig(t, w.other, payload(d))}
		}), nil, invalid},
		{"key: tampered payload", keyPolicy, legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			s := keySig(t, w.key, payload(d))
			s.Payload = bytes.Replace(s.Payload, []byte("cosign container image signature"), []byte("cosign container image signaturE"), 1)
			return []verifytest.Legacy{s}
		}), nil, invalid},
		{"key: a valid signature of another digest under this digest's tag", keyPolicy, legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			return []verifytest.Legacy{keySig(t, w.key, verifytest.SimpleSigning(d.Context().String(), otherDigest(d)))}
		}), nil, invalid},
		{"key: access to the signature denied", keyPolicy, legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			return []verifytest.Legacy{keySig(t, w.key, payload(d))}
		}), []ghcrsim.Fault{{Match: ".sig", Status: http.StatusForbidden}}, denied},

		{"keyless (.sig tag): right identity", keyless(workflow), legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			l, err := w.ss.LegacyKeyless(workflow, issuer, payload(d))
			if err != nil {
				t.Fatal(err)
			}
			return []verifytest.Legacy{l}
		}), nil, pass},
		{"keyless (.sig tag): another identity", keyless(workflow), legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			l, err := w.ss.LegacyKeyless("https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main", issuer, payload(d))
			if err != nil {
				t.Fatal(err)
			}
			return []verifytest.Legacy{l}
		}), nil, mismatch},
		{"keyless (.sig tag): another issuer", keyless(workflow), legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			l, err := w.ss.LegacyKeyless(workflow, "https://accounts.example.com", payload(d))
			if err != nil {
				t.Fatal(err)
			}
			return []verifytest.Legacy{l}
		}), nil, mismatch},
		{"keyless (.sig tag): certificate from an untrusted CA", keyless(workflow), legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			l, err := w.rogue.LegacyKeyless(workflow, issuer, payload(d))
			if err != nil {
				t.Fatal(err)
			}
			return []verifytest.Legacy{l}
		}), nil, invalid},
		{"keyless (.sig tag): Rekor bundle stripped", keyless(workflow), legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			l, err := w.ss.LegacyKeyless(workflow, issuer, payload(d))
			if err != nil {
				t.Fatal(err)
			}
			delete(l.Annotations, "dev.sigstore.cosign/bundle")
			return []verifytest.Legacy{l}
		}), nil, invalid},
		{"keyless (.sig tag): a key signature is not a keyless one", keyless(workflow), legacy(func(t *testing.T, d name.Digest) []verifytest.Legacy {
			return []verifytest.Legacy{keySig(t, w.key, payload(d))}
		}), nil, noSignature},
		{"keyless (bundle referrer): right identity", keyless(workflow), bundleOf(w.ss, workflow, verifytest.CosignSignPredicate, self, nil), nil, pass},
		{"keyless (bundle referrer): identity regexp", map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentityRegexp: `^https://github\.com/octo/`, verify.SettingIssuer: issuer, verify.SettingTrustedRoot: w.trustedRoot},
			bundleOf(w.ss, workflow, verifytest.CosignSignPredicate, self, nil), nil, pass},
		{"keyless (bundle referrer): another identity", keyless("https://github.com/octo/app/.github/workflows/other.yml@refs/heads/main"),
			bundleOf(w.ss, workflow, verifytest.CosignSignPredicate, self, nil), nil, mismatch},
		{"keyless (bundle referrer): subject is another digest", keyless(workflow), bundleOf(w.ss, workflow, verifytest.CosignSignPredicate, otherDigest, nil), nil, invalid},

		{"attestation: workflow of the repository", attest(), bundleOf(w.ss, workflow, verify.SLSAProvenanceV1, self, nil), nil, pass},
		{"attestation: the named signer workflow", attest(string(verify.SettingSignerWorkflow), "octo/app/.github/workflows/release.yml"),
			bundleOf(w.ss, workflow, verify.SLSAProvenanceV1, self, nil), nil, pass},
		{"attestation: another signer workflow", attest(string(verify.SettingSignerWorkflow), "octo/app/.github/workflows/nightly.yml"),
			bundleOf(w.ss, workflow, verify.SLSAProvenanceV1, self, nil), nil, mismatch},
		{"attestation: another repository", attest(), bundleOf(w.ss, "https://github.com/octo/app-fork/.github/workflows/release.yml@refs/heads/main", verify.SLSAProvenanceV1, self, nil), nil, mismatch},
		{"attestation: a reusable workflow elsewhere, no source-repository extension", attest(string(verify.SettingSignerWorkflow), "octo/shared/.github/workflows/build.yml"),
			bundleOf(w.ss, "https://github.com/octo/shared/.github/workflows/build.yml@refs/heads/main", verify.SLSAProvenanceV1, self, nil), nil, mismatch},
		{"attestation: only another predicate type", attest(), bundleOf(w.ss, workflow, "https://spdx.dev/Document/v2.3", self, nil), nil, noSignature},
		{"attestation: unsigned", attest(), nil, nil, noSignature},
		{"attestation: subject is another digest", attest(), bundleOf(w.ss, workflow, verify.SLSAProvenanceV1, otherDigest, nil), nil, invalid},
		{"attestation: tampered envelope", attest(), bundleOf(w.ss, workflow, verify.SLSAProvenanceV1, self, tamperPayload), nil, invalid},
		{"attestation: signed by an untrusted instance", attest(), bundleOf(w.rogue, workflow, verify.SLSAProvenanceV1, self, nil), nil, invalid},
		{"attestation: access to the referrers denied", attest(), bundleOf(w.ss, workflow, verify.SLSAProvenanceV1, self, nil),
			[]ghcrsim.Fault{{Match: "/manifests/sha256-", Status: http.StatusForbidden}}, denied},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := w.push(t, "case/"+string(rune('a'+i%26))+strings.Repeat("x", i/26))
			var sigManifest string
			if tc.sign != nil {
				sigManifest = tc.sign(t, d)
			}
			p := policy(t, tc.policy)
			w.front.ResetLog()
			w.front.Inject(tc.faults...)
			res, err := verify.Verify(context.Background(), p, d, w.auth)
			if got := failure.ClassOf(err); got != tc.want {
				t.Fatalf("got %q (%v), want %q", got, err, tc.want)
			}
			if n := w.front.Pending(); n != 0 {
				t.Errorf("%d injected faults were never hit", n)
			}
			if tc.want != pass {
				if res != (verify.Result{}) {
					t.Errorf("a failure returned a result: %+v", res)
				}
				t.Logf("error: %v", err)
				return
			}
			if res.Method != p.Method || res.SignatureDigest != sigManifest || res.Identity == "" {
				t.Errorf("result %+v, want method %s and signature digest %s", res, p.Method, sigManifest)
			}
			if p.Method != verify.CosignKey && res.Identity != workflow {
				t.Errorf("identity %q, want %q", res.Identity, workflow)
			}
		})
	}
}

// TestVerifyAnonymousDenied: a 401 when nothing was sent is the anonymous
// kind of rejection, as the probe reports it.
func TestVerifyAnonymousDenied(t *testing.T) {
	w := newWorld(t)
	d := w.push(t, "private/app")
	p := policy(t, map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: w.keyPEM})
	_, err := verify.Verify(context.Background(), p, d, nil)
	var rej *failure.Rejected
	if !errors.As(err, &rej) || !rej.Anonymous {
		t.Fatalf("got %v, want an anonymous RejectedError", err)
	}
}

// TestVerifyRequests bounds the registry round trips Verify adds.
func TestVerifyRequests(t *testing.T) {
	w := newWorld(t)
	d := w.push(t, "requests/app")
	s := keySig(t, w.key, verifytest.SimpleSigning(d.Context().String(), d.DigestStr()))
	if _, err := verifytest.WriteLegacy(d, []verifytest.Legacy{s}, remote.WithAuth(w.auth)); err != nil {
		t.Fatal(err)
	}
	w.front.ResetLog()
	if _, err := verify.Verify(context.Background(), policy(t, map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: w.keyPEM}), d, w.auth); err != nil {
		t.Fatal(err)
	}
	// ping, token, .sig manifest, payload blob
	if n := len(w.front.Requests()); n > 4 {
		t.Errorf("%d requests for a key-signed image, want at most 4: %+v", n, w.front.Requests())
	}
}

// tamperPayload flips a byte of the DSSE payload inside a bundle.
func tamperPayload(b []byte) []byte {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		panic(err)
	}
	env := m["dsseEnvelope"].(map[string]any)
	raw, _ := base64.StdEncoding.DecodeString(env["payload"].(string))
	raw = bytes.Replace(raw, []byte("test"), []byte("evil"), 1)
	env["payload"] = base64.StdEncoding.EncodeToString(raw)
	out, _ := json.Marshal(m)
	return out
}
