package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
	"github.com/ghcr-pull/ghcr-pull/internal/verify"
	"github.com/ghcr-pull/ghcr-pull/internal/verify/verifytest"
)

// cosignCLI runs the real cosign against the test registry. The registry
// password and the key password reach it only through its environment:
// COSIGN_PASSWORD, and a Docker credential helper (a shell script in the
// run's directory) that prints the registry secret from the environment,
// so neither is on a command line or on disk.
type cosignCLI struct {
	bin, dir string
	env      []string
	secrets  []string
}

const testWorkflow = "https://github.com/octo/app/.github/workflows/release.yml@refs/heads/main"

func newCosign(t *testing.T, e *Env) *cosignCLI {
	t.Helper()
	bin := cosignBinary(t)
	if cosign.took > 0 {
		t.Logf("built cosign %s in %s", cosignVersion, cosign.took.Round(time.Second))
	}
	dir := t.TempDir()
	helper := filepath.Join(dir, "bin", "docker-credential-ghcrtest")
	script := "#!/bin/sh\n# Docker credential helper for the test registry: the secret comes from the environment.\n" +
		"[ \"$1\" = get ] || exit 1\ncat >/dev/null\n" +
		"printf '{\"ServerURL\":\"%s\",\"Username\":\"%s\",\"Secret\":\"%s\"}\\n' \"$GHCRTEST_SERVER\" \"$GHCRTEST_USER\" \"$GHCRTEST_SECRET\"\n"
	if err := os.MkdirAll(filepath.Dir(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(helper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	docker := filepath.Join(dir, "docker")
	_ = os.MkdirAll(docker, 0o700)
	if err := os.WriteFile(filepath.Join(docker, "config.json"), []byte(fmt.Sprintf(`{"credHelpers":{%q:"ghcrtest"}}`, e.Host)), 0o600); err != nil {
		t.Fatal(err)
	}
	keyPassword := randomHex(12)
	c := &cosignCLI{bin: bin, dir: dir, secrets: []string{keyPassword, e.AdminPassword}}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "HOME" && k != "DOCKER_CONFIG" && k != "PATH" && !strings.HasPrefix(k, "COSIGN_") && !strings.HasPrefix(k, "SIGSTORE_") {
			c.env = append(c.env, kv)
		}
	}
	c.env = append(c.env, "HOME="+dir, "DOCKER_CONFIG="+docker, "PATH="+filepath.Dir(helper)+":"+os.Getenv("PATH"),
		"TUF_ROOT="+filepath.Join(dir, "tuf"), "COSIGN_PASSWORD="+keyPassword,
		"GHCRTEST_SERVER="+e.Host, "GHCRTEST_USER="+e.AdminUser, "GHCRTEST_SECRET="+e.AdminPassword)
	return c
}

// run runs cosign in its directory; the output is checked for the secrets.
func (c *cosignCLI) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Dir, cmd.Env = c.dir, c.env
	out, err := cmd.CombinedOutput()
	for _, s := range c.secrets {
		if strings.Contains(string(out), s) {
			t.Fatalf("cosign %s printed a secret", args[0])
		}
	}
	return string(out), err
}

// keyPair makes a cosign key pair named prefix.key/prefix.pub.
func (c *cosignCLI) keyPair(t *testing.T, prefix string) (priv, pub string) {
	t.Helper()
	if out, err := c.run(t, "generate-key-pair", "--output-key-prefix", prefix); err != nil {
		t.Fatalf("cosign generate-key-pair: %v\n%s", err, out)
	}
	return filepath.Join(c.dir, prefix+".key"), filepath.Join(c.dir, prefix+".pub")
}

func (c *cosignCLI) sign(t *testing.T, key string, d name.Digest) {
	t.Helper()
	if out, err := c.run(t, "sign", "--key", key, "--tlog-upload=false", "--allow-insecure-registry", "--yes", d.String()); err != nil {
		t.Fatalf("cosign sign: %v\n%s", err, out)
	}
}

func (c *cosignCLI) verifyKey(t *testing.T, pub, ref string) (string, error) {
	return c.run(t, "verify", "--key", pub, "--insecure-ignore-tlog=true", "--allow-insecure-registry", ref)
}

// class names a Verify outcome for the scenario table: results'
// error_class (failure.ClassOf), "verified" when it passed.
func class(err error) string {
	if err == nil {
		return "verified"
	}
	return failure.ClassOf(err)
}

func (e *Env) admin() authn.Authenticator {
	return &authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}
}

func (e *Env) pushDigest(t *testing.T, repo, tag string) name.Digest {
	t.Helper()
	d := e.PushRandomImage(t, repo, tag)
	ref, err := name.NewDigest(e.Host + "/" + repo + "@" + d)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func (e *Env) sigManifest(t *testing.T, d name.Digest) string {
	t.Helper()
	desc, err := remote.Head(d.Context().Tag(strings.Replace(d.DigestStr(), ":", "-", 1)+".sig"), remote.WithAuth(e.admin()))
	if err != nil {
		t.Fatalf("the .sig tag of %s: %v", d, err)
	}
	return desc.Digest.String()
}

func parsePolicy(t *testing.T, in map[verify.Setting]string) *verify.Policy {
	t.Helper()
	p, err := verify.ParsePolicy(func(n verify.Setting) string { return in[n] })
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestVerifyCosignKey: images signed by the real cosign CLI with a key,
// verified by verify.Verify through the token-auth registry, with cosign
// verify run on the same reference as the cross-check.
func TestVerifyCosignKey(t *testing.T) {
	e := Start(t)
	c := newCosign(t, e)
	key, pub := c.keyPair(t, "team")
	otherKey, _ := c.keyPair(t, "other")
	pubPEM, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	p := parsePolicy(t, map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: string(pubPEM)})

	cases := []struct {
		name string
		// setup returns the reference cosign verify is given and the
		// digest the probe would resolve it to.
		setup      func(t *testing.T, repo string) (ref string, d name.Digest)
		faults     func(d name.Digest) []ghcrsim.Fault
		want       string
		wantCosign bool
	}{
		{name: "signed with the team key", want: "verified", wantCosign: true, setup: func(t *testing.T, repo string) (string, name.Digest) {
			d := e.pushDigest(t, repo, "1")
			c.sign(t, key, d)
			return d.String(), d
		}},
		{name: "unsigned", want: failure.Unsigned, setup: func(t *testing.T, repo string) (string, name.Digest) {
			d := e.pushDigest(t, repo, "1")
			return d.String(), d
		}},
		{name: "signed by another key", want: failure.InvalidSignature, setup: func(t *testing.T, repo string) (string, name.Digest) {
			d := e.pushDigest(t, repo, "1")
			c.sign(t, otherKey, d)
			return d.String(), d
		}},
		{name: "tag moved to an unsigned digest after signing", want: failure.Unsigned, setup: func(t *testing.T, repo string) (string, name.Digest) {
			signed := e.pushDigest(t, repo, "v1")
			c.sign(t, key, signed)
			moved := e.pushDigest(t, repo, "v1")
			// What the probe resolves the tag to now.
			desc, err := remote.Head(signed.Context().Tag("v1"), remote.WithAuth(e.admin()))
			if err != nil || desc.Digest.String() != moved.DigestStr() {
				t.Fatalf("the tag resolves to %v (%v), want the moved digest %s", desc, err, moved.DigestStr())
			}
			return signed.Context().Tag("v1").String(), moved
		}},
		{name: "signature present, access to it denied", want: "rejected", wantCosign: true,
			setup: func(t *testing.T, repo string) (string, name.Digest) {
				d := e.pushDigest(t, repo, "1")
				c.sign(t, key, d)
				return d.String(), d
			},
			faults: func(d name.Digest) []ghcrsim.Fault {
				return []ghcrsim.Fault{{Match: "/manifests/" + strings.Replace(d.DigestStr(), ":", "-", 1) + ".sig", Status: http.StatusForbidden}}
			}},
	}
	var table []string
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := fmt.Sprintf("verify/key%d", i)
			ref, d := tc.setup(t, repo)
			e.Front.ResetLog()
			if tc.faults != nil {
				e.Front.Inject(tc.faults(d)...)
			}
			res, err := verify.Verify(context.Background(), p, d, e.admin())
			if got := class(err); got != tc.want {
				t.Fatalf("Verify: %s (%v), want %s", got, err, tc.want)
			}
			if e.Front.Pending() != 0 {
				t.Fatalf("the injected fault was never hit")
			}
			if tc.want == "verified" {
				if res.SignatureDigest != e.sigManifest(t, d) || res.Method != verify.CosignKey || !strings.HasPrefix(res.Identity, "key sha256:") {
					t.Errorf("result %+v, want the .sig manifest %s", res, e.sigManifest(t, d))
				}
			}
			// The real CLI's verdict on the same reference (no fault now).
			out, cerr := c.verifyKey(t, pub, ref)
			if (cerr == nil) != tc.wantCosign {
				t.Errorf("cosign verify: err=%v, want success=%v\n%s", cerr, tc.wantCosign, lastLinesOf(out, 5))
			}
			table = append(table, fmt.Sprintf("| %s | %s | %s |", tc.name, class(err), map[bool]string{true: "verified", false: "fails"}[cerr == nil]))
		})
	}
	t.Logf("scenario table (key):\n| scenario | verify.Verify | cosign verify |\n|---|---|---|\n%s", strings.Join(table, "\n"))
}

// TestVerifyKeylessAndAttestations: keyless signatures (cosign's `.sig`
// format and the new bundle format) and GitHub-style attestations made by
// a VirtualSigstore, pushed to the real registry, and verified against a
// trusted_root.json written for that instance. cosign verify cross-checks
// the `.sig`-format keyless signatures with the same trusted root.
func TestVerifyKeylessAndAttestations(t *testing.T) {
	e := Start(t)
	c := newCosign(t, e)
	ss, err := verifytest.New()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := ss.TrustedRoot()
	if err != nil {
		t.Fatal(err)
	}
	trFile := filepath.Join(c.dir, "trusted_root.json")
	if err := os.WriteFile(trFile, tr, 0o644); err != nil {
		t.Fatal(err)
	}
	keyless := parsePolicy(t, map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentity: testWorkflow,
		verify.SettingIssuer: verify.GitHubIssuer, verify.SettingTrustedRoot: trFile})
	attest := parsePolicy(t, map[verify.Setting]string{verify.SettingMethod: "github-attestation", verify.SettingRepository: "octo/app", verify.SettingTrustedRoot: trFile})
	admin := remote.WithAuth(e.admin())

	legacy := func(id string) func(t *testing.T, d name.Digest) string {
		return func(t *testing.T, d name.Digest) string {
			l, err := ss.LegacyKeyless(id, verify.GitHubIssuer, verifytest.SimpleSigning(d.Context().String(), d.DigestStr()))
			if err != nil {
				t.Fatal(err)
			}
			m, err := verifytest.WriteLegacy(d, []verifytest.Legacy{l}, admin)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	attach := func(id, predicate string) func(t *testing.T, d name.Digest) string {
		return func(t *testing.T, d name.Digest) string {
			b, err := ss.Bundle(id, verify.GitHubIssuer, verifytest.Statement(d.DigestStr(), predicate))
			if err != nil {
				t.Fatal(err)
			}
			m, err := verifytest.AttachBundle(d, b, predicate, admin)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	const fork = "https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main"
	keylessArgs := []string{"verify", "--certificate-identity", testWorkflow, "--certificate-oidc-issuer", verify.GitHubIssuer}
	bundleArgs := append(append([]string{}, keylessArgs...), "--new-bundle-format")
	attestArgs := []string{"verify-attestation", "--new-bundle-format", "--type", verify.SLSAProvenanceV1,
		"--certificate-identity-regexp", `^https://github\.com/octo/app/`, "--certificate-oidc-issuer", verify.GitHubIssuer}
	cases := []struct {
		name    string
		policy  *verify.Policy
		sign    func(t *testing.T, d name.Digest) string
		moveTag bool
		fault   bool
		want    string
		// cosign is the cosign command that checks the same thing, nil
		// when there is none to ask; cosignSays its expected verdict.
		cosign     []string
		cosignSays string
	}{
		{name: "keyless .sig: right identity", policy: keyless, sign: legacy(testWorkflow), want: "verified", cosign: keylessArgs, cosignSays: "verified"},
		{name: "keyless .sig: another identity", policy: keyless, sign: legacy(fork), want: failure.SignerMismatch, cosign: keylessArgs, cosignSays: "fails"},
		{name: "keyless .sig: unsigned", policy: keyless, want: failure.Unsigned, cosign: keylessArgs, cosignSays: "fails"},
		{name: "keyless .sig: tag moved after signing", policy: keyless, sign: legacy(testWorkflow), moveTag: true, want: failure.Unsigned, cosign: keylessArgs, cosignSays: "fails"},
		{name: "keyless .sig: access denied", policy: keyless, sign: legacy(testWorkflow), fault: true, want: "rejected"},
		{name: "keyless bundle referrer: right identity", policy: keyless, sign: attach(testWorkflow, verifytest.CosignSignPredicate), want: "verified", cosign: bundleArgs, cosignSays: "verified"},
		{name: "keyless bundle referrer: another identity", policy: keyless, sign: attach(fork, verifytest.CosignSignPredicate), want: failure.SignerMismatch, cosign: bundleArgs, cosignSays: "fails"},
		{name: "attestation: workflow of octo/app", policy: attest, sign: attach(testWorkflow, verify.SLSAProvenanceV1), want: "verified", cosign: attestArgs, cosignSays: "verified"},
		{name: "attestation: workflow of another repository", policy: attest, sign: attach(fork, verify.SLSAProvenanceV1), want: failure.SignerMismatch, cosign: attestArgs, cosignSays: "fails"},
		{name: "attestation: none", policy: attest, want: failure.Unsigned, cosign: attestArgs, cosignSays: "fails"},
		{name: "attestation: tag moved after attesting", policy: attest, sign: attach(testWorkflow, verify.SLSAProvenanceV1), moveTag: true, want: failure.Unsigned, cosign: attestArgs, cosignSays: "fails"},
		{name: "attestation: access to the referrers denied", policy: attest, sign: attach(testWorkflow, verify.SLSAProvenanceV1), fault: true, want: "rejected"},
	}
	var table []string
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := fmt.Sprintf("verify/keyless%d", i)
			d := e.pushDigest(t, repo, "v1")
			var sigManifest string
			if tc.sign != nil {
				sigManifest = tc.sign(t, d)
			}
			if tc.moveTag {
				d = e.pushDigest(t, repo, "v1")
			}
			e.Front.ResetLog()
			if tc.fault {
				// Both layouts live under a manifest tag sha256-<hex>[.sig].
				e.Front.Inject(ghcrsim.Fault{Match: "/manifests/" + strings.Replace(d.DigestStr(), ":", "-", 1), Status: http.StatusForbidden})
			}
			res, err := verify.Verify(context.Background(), tc.policy, d, e.admin())
			if got := class(err); got != tc.want {
				t.Fatalf("Verify: %s (%v), want %s", got, err, tc.want)
			}
			if e.Front.Pending() != 0 {
				t.Fatalf("the injected fault was never hit")
			}
			if tc.want == "verified" && (res.SignatureDigest != sigManifest || res.Identity != testWorkflow) {
				t.Errorf("result %+v, want signature %s by %s", res, sigManifest, testWorkflow)
			}
			cosign := "not asked"
			if tc.cosign != nil {
				ref := d.Context().Tag("v1").String()
				args := append(append([]string{}, tc.cosign...), "--trusted-root", trFile, "--insecure-ignore-sct", "--allow-insecure-registry", ref)
				out, cerr := c.run(t, args...)
				cosign = map[bool]string{true: "verified", false: "fails"}[cerr == nil]
				if cosign != tc.cosignSays {
					t.Errorf("cosign verify: %s, want %s\n%s", cosign, tc.cosignSays, lastLinesOf(out, 5))
				}
			}
			table = append(table, fmt.Sprintf("| %s | %s | %s |", tc.name, class(err), cosign))
		})
	}
	t.Logf("scenario table (keyless, attestations):\n| scenario | verify.Verify | cosign verify |\n|---|---|---|\n%s", strings.Join(table, "\n"))
}

// TestVerifyAnonymousFallback: a public image whose signature is read
// anonymously, after the step's credentials were rejected, as the probe's
// fallback would do it.
func TestVerifyAnonymousFallback(t *testing.T) {
	e := Start(t)
	c := newCosign(t, e)
	key, pub := c.keyPair(t, "team")
	pubPEM, _ := os.ReadFile(pub)
	p := parsePolicy(t, map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: string(pubPEM)})
	d := e.pushDigest(t, "verify/public", "1")
	c.sign(t, key, d)
	e.Front.SetPublic("verify/public")

	_, err := verify.Verify(context.Background(), p, d, &authn.Basic{Username: "expired", Password: canary})
	var rej *failure.Rejected
	if !errors.As(err, &rej) || rej.Anonymous {
		t.Fatalf("with rejected credentials: %v, want a non-anonymous RejectedError (the cue to fall back)", err)
	}
	e.Front.ResetLog()
	res, err := verify.Verify(context.Background(), p, d, nil)
	if err != nil {
		t.Fatalf("anonymously: %v", err)
	}
	for _, r := range e.Front.Requests() {
		if r.BasicUser != "" {
			t.Errorf("the anonymous verification sent credentials: %+v", r)
		}
	}
	if res.SignatureDigest != e.sigManifest(t, d) {
		t.Errorf("result %+v", res)
	}
}
