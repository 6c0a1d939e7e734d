package failure

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
)

func TestRedactorForms(t *testing.T) {
	const secret = `p@ss"wo\rd/+é`
	var r Redactor
	r.AddCredentials("deploy-bot", secret)
	texts := map[string]string{
		"plain":             "denied: " + secret,
		"json":              mustJSON(t, map[string]string{"error": "registry said " + secret}),
		"query":             "GET /token?password=" + url.QueryEscape(secret),
		"path":              "/v2/" + url.PathEscape(secret),
		"base64":            "echo " + base64.StdEncoding.EncodeToString([]byte(secret)),
		"basic header":      "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("deploy-bot:"+secret)),
		"basic header, url": base64.URLEncoding.EncodeToString([]byte("deploy-bot:" + secret)),
	}
	for name, text := range texts {
		got := r.Redact(text)
		if strings.Contains(got, secret) || strings.Contains(got, `wo\rd`) || strings.Contains(got, base64.StdEncoding.EncodeToString([]byte(secret))) {
			t.Errorf("%s: secret left in %q", name, got)
		}
		if !strings.Contains(got, Redacted) {
			t.Errorf("%s: nothing redacted in %q", name, got)
		}
	}
	// A redacted JSON document stays valid: the escaped form goes first.
	var v map[string]string
	if err := json.Unmarshal([]byte(r.Redact(texts["json"])), &v); err != nil || v["error"] != "registry said ***" {
		t.Errorf("redacted JSON %q: %v %v", r.Redact(texts["json"]), v, err)
	}
}

func TestRedactorMultiLineAndShort(t *testing.T) {
	var r Redactor
	key := "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
	added := r.Add(key)
	if len(added) == 0 {
		t.Fatal("no forms added")
	}
	if got := r.Redact("the server echoed b3BlbnNzaC1rZXktdjEAAAAA back"); strings.Contains(got, "b3BlbnNzaC1rZXktdjEAAAAA") {
		t.Errorf("a line of a multi-line secret survived: %q", got)
	}
	if again := r.Add(key); len(again) != 0 {
		t.Errorf("adding twice added %v", again)
	}
	r.Add("abc")
	if got := r.Redact("abcdef"); got != "abcdef" {
		t.Errorf("a 3-byte secret redacted ordinary text: %q", got)
	}
	var zero Redactor
	if got := zero.Redact("nothing known"); got != "nothing known" {
		t.Errorf("zero Redactor changed text: %q", got)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A secret that Clip cut in two is still redacted: its start before the
// ellipsis.
func TestRedactorClippedSecret(t *testing.T) {
	var r Redactor
	secret := "ghp_" + strings.Repeat("S", 36)
	r.Add(secret)
	msg := Clip(strings.Repeat("x", MaxMessage-10) + secret)
	got := r.Redact(msg)
	if strings.Contains(got, secret[:10]) || !strings.HasSuffix(got, Redacted+"…") {
		t.Errorf("clipped secret left: %q", got[len(got)-30:])
	}
	if got := r.Redact("nothing here…"); got != "nothing here…" {
		t.Errorf("an ordinary clipped text changed: %q", got)
	}
	// ClipTail cuts the other way: the secret's end after the ellipsis.
	tail := ClipTail(secret + strings.Repeat("y", MaxMessage-10))
	if got := r.Redact(tail); strings.Contains(got, secret[len(secret)-10:]) || !strings.HasPrefix(got, "…"+Redacted) {
		t.Errorf("tail-clipped secret left: %q", got[:30])
	}
	if got := r.Redact("…nothing here"); got != "…nothing here" {
		t.Errorf("an ordinary tail-clipped text changed: %q", got)
	}
}

// Guarantee: the unpadded base64 forms (RFC 4648 §3.2: JWTs, many token
// formats and some registries drop the "=") of a secret and of
// user:password are redacted, not only the padded ones. The secret's
// length is not a multiple of 3, so every padded form ends in "=" and the
// unpadded one is not merely the same text.
func TestRedactorUnpaddedBase64(t *testing.T) {
	const user, secret = "deploy-bot", "ghp_unpadded?>~secret12" // 23 bytes; user:secret 34
	if len(secret)%3 == 0 || len(user+":"+secret)%3 == 0 {
		t.Fatal("lengths that need no padding prove nothing here")
	}
	var r Redactor
	r.AddCredentials(user, secret)
	for name, enc := range map[string]*base64.Encoding{"raw std": base64.RawStdEncoding, "raw url": base64.RawURLEncoding} {
		for what, plain := range map[string]string{"secret": secret, "user:secret": user + ":" + secret} {
			form := enc.EncodeToString([]byte(plain))
			got := r.Redact("the peer said " + form + ".")
			if got != "the peer said "+Redacted+"." {
				t.Errorf("%s base64 of %s: %q left in %q", name, what, form, got)
			}
		}
	}
}
