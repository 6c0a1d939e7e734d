package action

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// outputRecorder is a sink that keeps the outputs it is given.
type outputRecorder struct {
	terminalSink
	outputs map[string]string
	order   []string
}

func (o *outputRecorder) output(name, value string) error {
	if o.outputs == nil {
		o.outputs = map[string]string{}
	}
	o.outputs[name] = value
	o.order = append(o.order, name)
	return nil
}

// Guarantee: the step's outputs say what happened: image-ref and digest of
// the first image from its first target that succeeded, auth-mode the one
// mode every success used ("mixed" otherwise, empty when nothing
// succeeded), fallback-used whether any target fell back.
func TestOutputValues(t *testing.T) {
	const (
		d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
		d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	)
	ok := func(img, host string, mode registryauth.Mode, digest string, fallback bool) pull.Result {
		r := pull.Result{Image: img, Host: host, AuthMode: mode, Digest: digest, ImageRef: image.Pinned(img, digest), FallbackUsed: fallback}
		if fallback {
			r.CredentialError = "403 Forbidden from the token endpoint"
		}
		return r
	}
	failed := func(img, host string) pull.Result {
		return pull.Result{Image: img, Host: host, Err: &failure.Rejected{Response: failure.Response{Status: 403}}, Diagnosis: "denied"}
	}
	const app, db = "ghcr.io/acme/app:1", "ghcr.io/acme/db:2"
	tests := []struct {
		name    string
		results []pull.Result
		want    map[string]string
	}{
		{"one image, token", []pull.Result{ok(app, "local", registryauth.ModeToken, d1, false)},
			map[string]string{"image-ref": "ghcr.io/acme/app@" + d1, "digest": d1, "auth-mode": "token", "fallback-used": "false", "credential-error": ""}},
		{"credentials rejected, anonymous worked", []pull.Result{ok(app, "none", registryauth.ModeAnonymous, d1, true)},
			map[string]string{"image-ref": "ghcr.io/acme/app@" + d1, "digest": d1, "auth-mode": "anonymous", "fallback-used": "true",
				"credential-error": "403 Forbidden from the token endpoint"}},
		{"one host fell back: fallback-used, mixed modes", []pull.Result{ok(app, "a", registryauth.ModeToken, d1, false), ok(app, "b", registryauth.ModeAnonymous, d1, true)},
			map[string]string{"image-ref": "ghcr.io/acme/app@" + d1, "digest": d1, "auth-mode": "mixed", "fallback-used": "true"}},
		{"the first host fell back, the last did not", []pull.Result{ok(app, "a", registryauth.ModeAnonymous, d1, true), ok(app, "b", registryauth.ModeToken, d1, false)},
			map[string]string{"auth-mode": "mixed", "fallback-used": "true", "credential-error": "403 Forbidden from the token endpoint"}},
		{"first target failed: the first success of the first image", []pull.Result{failed(app, "a"), ok(app, "b", registryauth.ModeToken, d1, false), ok(db, "a", registryauth.ModeToken, d2, false)},
			map[string]string{"image-ref": "ghcr.io/acme/app@" + d1, "digest": d1, "auth-mode": "token", "fallback-used": "false"}},
		{"second image is not the one described", []pull.Result{ok(app, "a", registryauth.ModeOIDC, d1, false), ok(db, "a", registryauth.ModeOIDC, d2, false)},
			map[string]string{"image-ref": "ghcr.io/acme/app@" + d1, "digest": d1, "auth-mode": "oidc", "fallback-used": "false"}},
		{"first image failed everywhere: nothing describes it", []pull.Result{failed(app, "a"), ok(db, "a", registryauth.ModeToken, d2, false)},
			map[string]string{"image-ref": "", "digest": "", "auth-mode": "token", "fallback-used": "false"}},
		{"nothing succeeded", []pull.Result{failed(app, "a")},
			map[string]string{"image-ref": "", "digest": "", "auth-mode": "", "fallback-used": "false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &outputRecorder{}
			if err := writeOutputs(&writer{sink: rec}, tt.results, nil); err != nil {
				t.Fatal(err)
			}
			for name, want := range tt.want {
				if got, set := rec.outputs[name]; !set || got != want {
					t.Errorf("%s = %q (set: %v), want %q", name, got, set, want)
				}
			}
			if got := strings.Join(rec.order, ","); got != "auth-mode,fallback-used,credential-error,digest,image-ref,verified,signature-digest,pull-quota,results" {
				t.Errorf("outputs written: %s", got)
			}
			if !strings.Contains(rec.outputs["results"], fmt.Sprintf(`"image":%q`, tt.results[0].Image)) {
				t.Errorf("results %s", rec.outputs["results"])
			}
		})
	}
}

// The same values as a real step writes them: a private image with the
// password, and a public one whose credentials the registry refuses.
func TestStepOutputValues(t *testing.T) {
	reg := startRegistry(t)
	for _, tc := range []struct {
		repo, password string
		mode, fallback string
	}{
		{"acme/private", testPassword, "token", "false"},
		{"acme/public", "wrong-password", "anonymous", "true"},
	} {
		s := runStep(t, map[string]string{"image": reg.host + "/" + tc.repo + ":1", "username": testUser, "password": tc.password, "destination": "none"}, nil)
		if s.code != ExitOK {
			t.Fatalf("%s: exit %d:\n%s", tc.repo, s.code, s.stdout)
		}
		digest := s.outputs["digest"]
		if !strings.HasPrefix(digest, "sha256:") || len(digest) != 71 {
			t.Errorf("%s: digest %q", tc.repo, digest)
		}
		if want := reg.host + "/" + tc.repo + "@" + digest; s.outputs["image-ref"] != want {
			t.Errorf("%s: image-ref %q, want %q", tc.repo, s.outputs["image-ref"], want)
		}
		if s.outputs["auth-mode"] != tc.mode || s.outputs["fallback-used"] != tc.fallback {
			t.Errorf("%s: auth-mode %q fallback-used %q, want %s %s", tc.repo, s.outputs["auth-mode"], s.outputs["fallback-used"], tc.mode, tc.fallback)
		}
	}
}
