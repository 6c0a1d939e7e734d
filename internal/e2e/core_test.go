package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// canary is the password of every credentialed run: no output but the
// add-mask line may ever contain it.
const canary = "ghp_canary0123456789SECRETabcdefXYZ"

type coreCase struct {
	name       string
	repo       string // pushed before the run unless missing
	public     bool
	password   string // "" leaves the input unset
	user       string
	inputs     map[string]string
	reject     int // front's answer to unaccepted credentials
	tag        string
	setup      func(e *Env)
	wantExit   int
	wantMode   string
	wantFallbk string
	wantPulled bool
	check      func(t *testing.T, e *Env, res Result, digest string)
}

func TestCore(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/private-good")

	cases := []coreCase{
		{name: "good credentials on a private repository", repo: "acme/private-good", user: "deployer", password: canary,
			wantMode: "token", wantFallbk: "false", wantPulled: true},
		{name: "rejected credentials on a public repository, 403", repo: "acme/public-403", public: true, user: "deployer", password: "wrong-" + canary, reject: 403,
			wantMode: "anonymous", wantFallbk: "true", wantPulled: true, check: wantWarning("403")},
		{name: "rejected credentials on a public repository, 401", repo: "acme/public-401", public: true, user: "deployer", password: "wrong-" + canary, reject: 401,
			wantMode: "anonymous", wantFallbk: "true", wantPulled: true, check: wantWarning("401")},
		{name: "rejected credentials on a private repository", repo: "acme/private-rej", user: "deployer", password: "wrong-" + canary,
			wantExit: 1, check: func(t *testing.T, e *Env, res Result, _ string) {
				wantLine(t, res.Stdout, "::error")
				wantLine(t, res.Stdout, "anonymous access denied")
			}},
		{name: "a missing image is not found, with no anonymous attempt", repo: "acme/private-good", tag: "missing", user: "deployer", password: canary,
			wantExit: 1, check: func(t *testing.T, e *Env, res Result, _ string) {
				wantLine(t, res.Stdout, "not found")
				for _, r := range e.Front.Requests() {
					if r.Path == "/token" && r.BasicUser == "" {
						t.Errorf("an anonymous token request followed a not-found: %+v", r)
					}
				}
			}},
		{name: "503 twice, then success", repo: "acme/flaky-503", public: true, user: "deployer", password: canary, reject: 403,
			setup:  func(e *Env) { e.Front.FailNext(2, http.StatusServiceUnavailable, "", "/manifests/") },
			inputs: map[string]string{"auth": "anonymous"}, wantMode: "anonymous", wantFallbk: "false", wantPulled: true,
			check: wantRetries(2, 503)},
		{name: "429 with Retry-After, then success", repo: "acme/flaky-429", public: true,
			setup:  func(e *Env) { e.Front.FailNext(1, http.StatusTooManyRequests, "1", "/manifests/") },
			inputs: map[string]string{"auth": "anonymous"}, wantMode: "anonymous", wantFallbk: "false", wantPulled: true,
			check: func(t *testing.T, e *Env, res Result, d string) {
				wantRetries(1, 429)(t, e, res, d)
				wantLine(t, res.Stdout, "retry 1 in 1s")
			}},
		{name: "empty password pulls anonymously with a notice", repo: "acme/public-nopw", public: true,
			wantMode: "anonymous", wantFallbk: "false", wantPulled: true, check: func(t *testing.T, e *Env, res Result, _ string) {
				wantLine(t, res.Stdout, "::notice")
			}},
		{name: "anonymous-fallback false with rejected credentials fails", repo: "acme/public-nofb", public: true, user: "deployer", password: "wrong-" + canary,
			inputs: map[string]string{"anonymous-fallback": "false"}, wantExit: 1},
		{name: "a registry message cannot inject outputs", repo: "acme/public-inject", public: true, user: "deployer", password: "wrong-" + canary,
			setup: func(e *Env) {
				e.Front.SetReject(403, "denied\n_GitHubActionsFileCommandDelimeter_\ninjected=1\n::warning::pwned\nauth-mode<<EOF")
			},
			wantMode: "anonymous", wantFallbk: "true", wantPulled: true, check: func(t *testing.T, e *Env, res Result, _ string) {
				if _, ok := res.Outputs["injected"]; ok {
					t.Errorf("output injected: %v", res.Outputs)
				}
				for _, l := range strings.Split(res.Stdout, "\n") {
					if strings.HasPrefix(l, "::warning::pwned") {
						t.Errorf("a workflow command was injected: %q", l)
					}
				}
				if !strings.Contains(res.Outputs["credential-error"], "injected=1") {
					t.Errorf("credential-error lost the registry's words: %q", res.Outputs["credential-error"])
				}
			}},
		{name: "destination none resolves without pulling", repo: "acme/public-none", public: true, inputs: map[string]string{"destination": "none", "auth": "anonymous"},
			wantMode: "anonymous", wantFallbk: "false", wantPulled: false},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tag := "1.2.3"
			digest := e.PushRandomImage(t, tc.repo, tag)
			if tc.public {
				e.Front.SetPublic(tc.repo)
			}
			if tc.tag != "" {
				tag = tc.tag
			}
			ref := e.Host + "/" + tc.repo + ":" + tag
			e.RemoveLocalImage(t, ref)
			t.Cleanup(func() { e.RemoveLocalImage(t, ref); e.Front.SetReject(403, "") })
			reject := tc.reject
			if reject == 0 {
				reject = 403
			}
			e.Front.SetReject(reject, "")
			e.Front.ResetLog()
			if tc.setup != nil {
				tc.setup(e)
			}
			inputs := map[string]string{"image": ref, "username": tc.user, "password": tc.password}
			for k, v := range tc.inputs {
				inputs[k] = v
			}
			res := e.RunAction(t, inputs)
			if res.ExitCode != tc.wantExit {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", res.ExitCode, tc.wantExit, res.Stdout, res.Stderr)
			}
			assertNoSecretLeak(t, res, tc.password)
			inDaemon := len(e.LocalImageDigests(t, ref)) > 0
			if inDaemon != tc.wantPulled {
				t.Errorf("image in the daemon: %v, want %v", inDaemon, tc.wantPulled)
			}
			if tc.wantExit == 0 {
				if res.Outputs["auth-mode"] != tc.wantMode || res.Outputs["fallback-used"] != tc.wantFallbk {
					t.Errorf("auth-mode=%q fallback-used=%q, want %q %q\n%s", res.Outputs["auth-mode"], res.Outputs["fallback-used"], tc.wantMode, tc.wantFallbk, res.Stdout)
				}
				if res.Outputs["digest"] != digest {
					t.Errorf("digest %q, want the pushed %q", res.Outputs["digest"], digest)
				}
				if want := e.Host + "/" + tc.repo + "@" + digest; res.Outputs["image-ref"] != want {
					t.Errorf("image-ref %q, want %q", res.Outputs["image-ref"], want)
				}
				if tc.wantPulled {
					if ds := e.LocalImageDigests(t, ref); !contains(ds, e.Host+"/"+tc.repo+"@"+digest) {
						t.Errorf("daemon RepoDigests %v lack the pushed digest", ds)
					}
				}
				var results []map[string]any
				if err := json.Unmarshal([]byte(res.Outputs["results"]), &results); err != nil || len(results) != 1 {
					t.Fatalf("results output %q: %v", res.Outputs["results"], err)
				}
				if results[0]["auth_mode"] != tc.wantMode || results[0]["digest"] != digest {
					t.Errorf("results = %v", results[0])
				}
				if !strings.Contains(res.Summary, "| Image | Host |") || !strings.Contains(res.Summary, tc.repo) {
					t.Errorf("summary lacks the table:\n%s", res.Summary)
				}
			} else if res.Outputs["image-ref"] != "" {
				t.Errorf("a failed run set image-ref %q", res.Outputs["image-ref"])
			}
			if tc.check != nil {
				tc.check(t, e, res, digest)
			}
		})
	}
}

func wantWarning(status string) func(t *testing.T, e *Env, res Result, _ string) {
	return func(t *testing.T, e *Env, res Result, _ string) {
		wantLine(t, res.Stdout, "::warning title=ghcr-pull%3A credentials rejected")
		if !strings.Contains(res.Outputs["credential-error"], status) {
			t.Errorf("credential-error %q lacks %s", res.Outputs["credential-error"], status)
		}
	}
}

func wantRetries(n, status int) func(t *testing.T, e *Env, res Result, _ string) {
	return func(t *testing.T, e *Env, res Result, _ string) {
		got := 0
		for _, r := range e.Front.Requests() {
			if r.Status == status {
				got++
			}
		}
		if got != n {
			t.Errorf("%d responses with %d, want %d", got, status, n)
		}
		if c := strings.Count(res.Stdout, "retry "); c != n {
			t.Errorf("%d retry lines, want %d:\n%s", c, n, res.Stdout)
		}
	}
}

func wantLine(t *testing.T, out, substr string) {
	t.Helper()
	if !strings.Contains(out, substr) {
		t.Errorf("output lacks %q:\n%s", substr, out)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// assertNoSecretLeak: the secret appears only in the add-mask line, never
// in stderr, outputs, the summary, or any file under the run's HOME and
// TMPDIR (no config.json).
func assertNoSecretLeak(t *testing.T, res Result, secret string) {
	t.Helper()
	if secret == "" {
		return
	}
	for _, line := range strings.Split(res.Stdout, "\n") {
		if strings.Contains(line, secret) && line != "::add-mask::"+secret {
			t.Errorf("secret in stdout: %q", line)
		}
	}
	for what, s := range map[string]string{"stderr": res.Stderr, "outputs": res.OutputFile, "summary": res.Summary} {
		if strings.Contains(s, secret) {
			t.Errorf("secret in %s", what)
		}
	}
	for _, dir := range []string{res.Home, res.Temp} {
		_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return nil
			}
			if b, _ := os.ReadFile(p); strings.Contains(string(b), secret) {
				t.Errorf("secret written to %s", p)
			}
			return nil
		})
	}
}
