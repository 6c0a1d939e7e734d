package ghcr

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// rejected is what failure.FromRegistry makes of a 401 or 403 (its own
// tests cover that reading).
func rejected(status int, where, code, msg string, anonymous bool) error {
	return &failure.Rejected{Response: failure.Response{Status: status, Code: code, Message: msg, Where: where}, Anonymous: anonymous}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"1", time.Second},
		{"120", 2 * time.Minute},
		{"-5", 0},
		{"soon", 0},
		{now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second},
		{now.Add(-30 * time.Second).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := ParseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestDiagnoseGHCR(t *testing.T) {
	rej := rejected(403, "token endpoint", "DENIED", "requested access to the resource is denied", false)
	anon := rejected(401, "registry", "", "Unauthorized", true)
	got := Diagnose("ghcr.io", []Attempt{{Mode: registryauth.ModeToken, Err: rej}, {Mode: registryauth.ModeAnonymous, Err: anon}})
	for _, want := range []string{"with credentials: credentials rejected", "anonymously: anonymous access denied",
		"packages: read", "Manage Actions access", "read:packages", "private by default"} {
		if !strings.Contains(got, want) {
			t.Errorf("diagnosis lacks %q:\n%s", want, got)
		}
	}
	other := Diagnose("registry.example.com", []Attempt{{Mode: registryauth.ModeToken, Err: rej}})
	if strings.Contains(other, "Manage Actions access") {
		t.Errorf("GHCR advice given for another registry:\n%s", other)
	}
}

func TestDiagnoseTellsWhatHappened(t *testing.T) {
	wrongPassword := rejected(401, "token endpoint", "UNAUTHORIZED", "authentication required", false)
	noAccess := rejected(403, "token endpoint", "DENIED", "requested access to the resource is denied", false)
	daemonNoAccess := failure.FromDaemon(500, `Get "https://r.example/token": failed to fetch oauth token: unexpected status: 403 Forbidden`, false)
	daemonAnonDenied := failure.FromDaemon(404, "pull access denied for r.example/acme/app, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", true)
	tests := []struct {
		name     string
		registry string
		attempts []Attempt
		want     []string
		not      []string
	}{
		{"401: the credentials are wrong", "r.example", []Attempt{{Mode: registryauth.ModeToken, Err: wrongPassword}},
			[]string{"check the username and password"}, []string{"signed in, but no access"}},
		{"403: signed in, no access", "r.example", []Attempt{{Mode: registryauth.ModeToken, Err: noAccess}},
			[]string{"signed in, but no access to this repository"}, []string{"check the username and password"}},
		{"403 relayed by a daemon", "r.example", []Attempt{{Mode: registryauth.ModeToken, Target: "h:22", Err: daemonNoAccess}},
			[]string{"signed in, but no access"}, nil},
		{"GHCR 403 is both: its own fixes", "ghcr.io", []Attempt{{Mode: registryauth.ModeToken, Err: noAccess}},
			[]string{"packages: read"}, []string{"signed in, but no access"}},
		{"probe let in, daemon refused: a disagreement", "r.example",
			[]Attempt{{Mode: registryauth.ModeAnonymous}, {Mode: registryauth.ModeAnonymous, Target: "10.0.0.5:22", Err: daemonAnonDenied}},
			[]string{"the runner's probe could read the repository anonymously, but the daemon on 10.0.0.5:22 was refused anonymously"},
			[]string{"private or does not exist"}},
		{"refused credentials recovered from, then unsigned: the signature's advice alone", "r.example",
			[]Attempt{{Mode: registryauth.ModeToken, Err: noAccess}, {Mode: registryauth.ModeAnonymous}, {Mode: registryauth.ModeAnonymous, Err: signatureErr(failure.Unsigned)}},
			[]string{"with credentials: credentials rejected", "no signature the verify policy accepts"}, []string{"signed in, but no access", "read access"}},
		{"invalid signature with working credentials", "r.example",
			[]Attempt{{Mode: registryauth.ModeToken}, {Mode: registryauth.ModeToken, Err: signatureErr(failure.InvalidSignature)}},
			[]string{"What to do", "{VerifyKey} is the public half"}, nil},
		{"another signer", "ghcr.io",
			[]Attempt{{Mode: registryauth.ModeToken}, {Mode: registryauth.ModeToken, Err: signatureErr(failure.SignerMismatch)}},
			[]string{"not by the signer the policy names"}, []string{"packages: read"}},
		{"both refused: private", "r.example",
			[]Attempt{{Mode: registryauth.ModeAnonymous, Err: rejected(401, "registry", "", "Unauthorized", true)}, {Mode: registryauth.ModeAnonymous, Target: "h:22", Err: daemonAnonDenied}},
			[]string{"private or does not exist"}, []string{"runner's probe could read"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Diagnose(tt.registry, tt.attempts)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("diagnosis lacks %q:\n%s", w, got)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(got, n) {
					t.Errorf("diagnosis says %q:\n%s", n, got)
				}
			}
		})
	}
}

// signatureErr stands for internal/verify's errors, which name their class.
type signatureErr string

func (e signatureErr) Error() string { return "signature verification failed: " + string(e) }
func (e signatureErr) Class() string { return string(e) }
