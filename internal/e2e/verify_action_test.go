package e2e

import (
	"os"
	"strings"
	"testing"
)

// TestVerifyThroughTheAction runs the binary with verify: cosign-key on
// images the real cosign signed: only a verified digest reaches the
// daemon, an unsigned one fails the step with nothing pulled, and a
// public image whose credentials are refused is verified and pulled
// anonymously, the summary saying both.
func TestVerifyThroughTheAction(t *testing.T) {
	e := Start(t)
	c := newCosign(t, e)
	key, pub := c.keyPair(t, "deploy")
	pubPEM, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	e.Front.AddUser("verifier", canary, false, "acme/va-signed", "acme/va-unsigned")
	signed := e.pushDigest(t, "acme/va-signed", "1")
	c.sign(t, key, signed)
	e.pushDigest(t, "acme/va-unsigned", "1")
	public := e.pushDigest(t, "acme/va-public", "1")
	c.sign(t, key, public)
	e.Front.SetPublic("acme/va-public")
	inputs := func(repo, password string) map[string]string {
		return map[string]string{"image": e.Host + "/" + repo + ":1", "username": "verifier", "password": password,
			"verify": "cosign-key", "verify-key": string(pubPEM)}
	}

	t.Run("signed: verified, then that digest pulled", func(t *testing.T) {
		res := e.RunAction(t, inputs("acme/va-signed", canary))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		r := results(t, res)[0]
		if r["verify_method"] != "cosign-key" || r["signature_digest"] == "" || r["digest"] != signed.DigestStr() {
			t.Errorf("result %v", r)
		}
		if !strings.HasPrefix(res.Outputs["verified"], "cosign-key: key sha256:") || res.Outputs["signature-digest"] != r["signature_digest"] {
			t.Errorf("outputs verified=%q signature-digest=%q", res.Outputs["verified"], res.Outputs["signature-digest"])
		}
		if got := e.LocalImageDigests(t, e.Host+"/acme/va-signed:1"); len(got) == 0 {
			t.Errorf("the verified image is not in the daemon")
		}
		assertNoSecretLeak(t, res, canary)
	})

	t.Run("unsigned: fails, nothing pulled", func(t *testing.T) {
		ref := e.Host + "/acme/va-unsigned:1"
		e.RemoveLocalImage(t, ref)
		res := e.RunAction(t, inputs("acme/va-unsigned", canary))
		if res.ExitCode != 1 || !strings.Contains(res.Stdout, "signature verification") {
			t.Fatalf("exit %d, want 1 naming the verification\n%s", res.ExitCode, res.Stdout)
		}
		if got := e.LocalImageDigests(t, ref); len(got) != 0 {
			t.Errorf("an unsigned image was pulled: %v", got)
		}
		r := results(t, res)[0]
		if r["digest"] != "" || r["signature_digest"] != nil {
			t.Errorf("the failed result claims %v", r)
		}
		if r["error_class"] != "unsigned" || !strings.Contains(res.Summary, "no signature the verify policy accepts") {
			t.Errorf("error_class %v, want unsigned, and the summary's advice on the signature:\n%s", r["error_class"], res.Summary)
		}
	})

	t.Run("rejected credentials, public signed image: anonymous and verified", func(t *testing.T) {
		res := e.RunAction(t, inputs("acme/va-public", "wrong-"+canary))
		if res.ExitCode != 0 || res.Outputs["auth-mode"] != "anonymous" || res.Outputs["fallback-used"] != "true" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		if !strings.Contains(res.Summary, "verified before any pull") || !strings.Contains(res.Summary, "yes: ") {
			t.Errorf("summary does not show both the fallback and the verification:\n%s", res.Summary)
		}
		assertNoSecretLeak(t, res, "wrong-"+canary)
	})
}
