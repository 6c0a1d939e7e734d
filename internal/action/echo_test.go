package action

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

// secret is one secret of a scenario; user is set for a password, whose
// base64(user:password) form counts too.
type secret struct{ user, value string }

// forms are the shapes a secret must never leave the process in.
func (s secret) forms() map[string]string {
	j, _ := json.Marshal(s.value)
	// a JSON-escaped echo inside a JSON output (results) is escaped again
	jj, _ := json.Marshal(string(j[1 : len(j)-1]))
	f := map[string]string{
		"plain":              s.value,
		"JSON-escaped":       string(j[1 : len(j)-1]),
		"JSON-escaped twice": string(jj[1 : len(jj)-1]),
		"URL-encoded":        url.QueryEscape(s.value),
		"path-escaped":       url.PathEscape(s.value),
		"base64":             base64.StdEncoding.EncodeToString([]byte(s.value)),
		"base64url":          base64.URLEncoding.EncodeToString([]byte(s.value)),
		// JWTs and many token formats drop the padding
		"unpadded base64":    base64.RawStdEncoding.EncodeToString([]byte(s.value)),
		"unpadded base64url": base64.RawURLEncoding.EncodeToString([]byte(s.value)),
		"HTML-escaped":       html.EscapeString(s.value),
		// as a summary table cell shows it
		"table cell": strings.ReplaceAll(html.EscapeString(s.value), "|", `\|`),
	}
	if s.user != "" {
		f["base64(user:password)"] = base64.StdEncoding.EncodeToString([]byte(s.user + ":" + s.value))
		f["unpadded base64(user:password)"] = base64.RawStdEncoding.EncodeToString([]byte(s.user + ":" + s.value))
	}
	return f
}

// logText is the log without the ::add-mask:: commands (which carry the
// secrets by design), also as the runner shows it: annotations escape %,
// CR, LF (and : , in properties).
func logText(stdout string) (raw, shown string) {
	var kept []string
	for _, l := range strings.Split(stdout, "\n") {
		if !strings.HasPrefix(l, "::add-mask::") {
			kept = append(kept, l)
		}
	}
	raw = strings.Join(kept, "\n")
	shown = strings.NewReplacer("%25", "%", "%0D", "\r", "%0A", "\n", "%3A", ":", "%2C", ",").Replace(raw)
	return raw, shown
}

// Guarantee: a secret that a peer echoes in its error text never leaves
// the process: not in the log, the annotations, any output or the summary,
// in any of its forms. The outputs stay usable (results is JSON) and
// credential-error keeps the peer's own words around ***.
func TestEchoedSecretsNeverLeave(t *testing.T) {
	type scenario struct {
		inputs, env map[string]string
		secrets     []secret
		wantCode    int
		// wantCredErr is a phrase of the peer's own words credential-error
		// must keep; "" when the run writes no outputs (OIDC failed).
		wantCredErr string
	}
	tests := []struct {
		name  string
		setup func(t *testing.T) scenario
	}{
		{"token endpoint repeats the password", func(t *testing.T) scenario {
			reg := startRegistry(t)
			const wrong = `ghp_exp1red/t+k"n&<|>`
			reg.front.SetReject(http.StatusUnauthorized, "bad credentials: "+echo(testUser, wrong))
			return scenario{
				inputs:  map[string]string{"image": reg.host + "/acme/public:1", "username": testUser, "password": wrong, "destination": "none"},
				secrets: []secret{{testUser, wrong}}, wantCode: ExitOK, wantCredErr: "bad credentials: secret=***",
			}
		}},
		{"manifest error from the daemon repeats the password", func(t *testing.T) scenario {
			reg := startRegistry(t)
			eng := startEngine(t, func(w http.ResponseWriter, r *http.Request, call int) {
				if call == 1 {
					callError(w, http.StatusInternalServerError, fmt.Sprintf(`Head "https://%s/v2/acme/private/manifests/1": unauthorized: manifest access denied, %s`, reg.host, echo(testUser, testPassword)))
					return
				}
				callError(w, http.StatusNotFound, "pull access denied for acme/private, repository does not exist or may require 'docker login'")
			})
			return scenario{
				inputs: map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": testPassword,
					"docker-host": eng.host, "retries": "0"},
				secrets: []secret{{testUser, testPassword}}, wantCode: ExitFailed, wantCredErr: "unauthorized: manifest access denied, secret=***",
			}
		}},
		{"daemon pull stream repeats the password", func(t *testing.T) scenario {
			reg := startRegistry(t)
			eng := startEngine(t, func(w http.ResponseWriter, r *http.Request, call int) {
				if call == 1 {
					pullStream(w, map[string]any{"status": "Pulling from acme/private", "id": "1"},
						streamError("Get \"https://"+reg.host+"/v2/acme/private/manifests/1\": unauthorized: "+echo(testUser, testPassword)))
					return
				}
				pullStream(w, streamError("pull access denied for acme/private, repository does not exist or may require 'docker login': denied"))
			})
			return scenario{
				inputs: map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": testPassword,
					"docker-host": eng.host, "retries": "0"},
				secrets: []secret{{testUser, testPassword}}, wantCode: ExitFailed, wantCredErr: "unauthorized: secret=***",
			}
		}},
		{"CRI error repeats the password", func(t *testing.T) scenario {
			reg := startRegistry(t)
			sock := startCRI(t, &criFake{pull: func(r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
				if r.Auth != nil {
					return nil, criError("failed to pull and unpack image: failed to resolve reference: failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized: " + echo(r.Auth.Username, r.Auth.Password))
				}
				return nil, criError("failed to pull and unpack image: failed to fetch anonymous token: unexpected status: 401 Unauthorized")
			}})
			key, signer := sshKey(t, "ssh-passphrase-77")
			srv := sshtest.Start(t, signer.PublicKey())
			return scenario{
				inputs: map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": testPassword, "retries": "0",
					"ssh-host": "127.0.0.1", "ssh-port": fmt.Sprint(srv.Port), "ssh-user": "root", "ssh-key": key, "ssh-key-passphrase": "ssh-passphrase-77",
					"ssh-known-hosts": srv.KnownHosts(""), "remote-runtime": "containerd", "remote-containerd-socket": sock},
				secrets:  []secret{{testUser, testPassword}, {"", "ssh-passphrase-77"}},
				wantCode: ExitFailed, wantCredErr: "failed to fetch oauth token: unexpected status: 401 Unauthorized: secret=***",
			}
		}},
		{"OIDC exchange error repeats the ID token", func(t *testing.T) scenario {
			jwt := fakeJWT(t)
			env, _ := idTokenEndpoint(t, jwt, 0)
			exchange := provider(t, func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant",
					"error_description": "subject not allowed: " + echo("", r.PostForm.Get("subject_token"))})
			})
			return scenario{
				inputs: map[string]string{"image": "ghcr.io/acme/app:1", "auth": "oidc", "oidc-provider": "token-exchange",
					"token-exchange-url": exchange + "/token", "retries": "0"},
				env: env, secrets: []secret{{"", jwt}}, wantCode: ExitFailed,
			}
		}},
		{"STS error repeats the ID token", func(t *testing.T) scenario {
			jwt := fakeJWT(t)
			env, _ := idTokenEndpoint(t, jwt, 0)
			aws := provider(t, func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				w.Header().Set("Content-Type", "text/xml")
				w.WriteHeader(http.StatusForbidden)
				fmt.Fprintf(w, `<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Token %s is not valid</Message></Error><RequestId>x</RequestId></ErrorResponse>`,
					html.EscapeString(echo("", r.PostForm.Get("WebIdentityToken"))))
			})
			env["AWS_ENDPOINT_URL_STS"], env["AWS_ENDPOINT_URL_ECR"] = aws, aws
			return scenario{
				inputs: map[string]string{"image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1", "auth": "oidc", "oidc-provider": "aws-ecr",
					"aws-role-arn": "arn:aws:iam::123456789012:role/pull", "retries": "0"},
				env: env, secrets: []secret{{"", jwt}}, wantCode: ExitFailed,
			}
		}},
		{"ECR error repeats the STS credentials", func(t *testing.T) scenario {
			jwt := fakeJWT(t)
			env, _ := idTokenEndpoint(t, jwt, 0)
			aws := provider(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Amz-Target") == "" {
					w.Header().Set("Content-Type", "text/xml")
					io.WriteString(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAFAKE</AccessKeyId><SecretAccessKey>aws-secret-key-0123</SecretAccessKey><SessionToken>aws-session-token-4567</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>`)
					return
				}
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				w.Header().Set("X-Amzn-Errortype", "AccessDeniedException")
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"__type": "AccessDeniedException",
					"message": "not allowed: " + echo("", "aws-secret-key-0123") + " " + echo("", "aws-session-token-4567")})
			})
			env["AWS_ENDPOINT_URL_STS"], env["AWS_ENDPOINT_URL_ECR"] = aws, aws
			return scenario{
				inputs: map[string]string{"image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1", "auth": "oidc", "oidc-provider": "aws-ecr",
					"aws-role-arn": "arn:aws:iam::123456789012:role/pull", "retries": "0"},
				env: env, secrets: []secret{{"", jwt}, {"", "aws-secret-key-0123"}, {"", "aws-session-token-4567"}}, wantCode: ExitFailed,
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := tt.setup(t)
			s := runStep(t, sc.inputs, sc.env)
			if s.code != sc.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", s.code, sc.wantCode, s.stdout)
			}
			raw, shown := logText(s.stdout)
			texts := map[string]string{"log": raw, "log as shown": shown, "GITHUB_OUTPUT": s.rawOut, "summary": s.summary}
			for name, v := range s.outputs {
				texts["output "+name] = v
			}
			for where, text := range texts {
				for _, sec := range sc.secrets {
					for form, f := range sec.forms() {
						if strings.Contains(text, f) {
							t.Errorf("%s holds a secret %s: %q", where, form, f)
						}
					}
				}
			}
			if !strings.Contains(raw, "***") {
				t.Errorf("the log shows no ***: the peer's echo never arrived, and the test proves nothing:\n%s", raw)
			}
			if sc.wantCredErr == "" {
				return
			}
			var results []ResultJSON
			if err := json.Unmarshal([]byte(s.outputs["results"]), &results); err != nil || len(results) == 0 {
				t.Errorf("results is not a JSON array of results (%v): %q", err, s.outputs["results"])
			}
			if ce := s.outputs["credential-error"]; !strings.Contains(ce, sc.wantCredErr) {
				t.Errorf("credential-error %q lacks the peer's words %q", ce, sc.wantCredErr)
			}
			if !strings.Contains(s.summary, "***") {
				t.Errorf("the summary shows no ***:\n%s", s.summary)
			}
		})
	}
}

// cliArgs turns a scenario's inputs into the command line: a flag per
// input, the password in GHCR_PULL_PASSWORD (it is never a flag).
func cliArgs(t *testing.T, inputs, env map[string]string) ([]string, map[string]string) {
	t.Helper()
	e := map[string]string{}
	for k, v := range env {
		e[k] = v
	}
	var args []string
	for k, v := range inputs {
		switch {
		case k == "password":
			e["GHCR_PULL_PASSWORD"] = v
		case secretInputs[k]:
			t.Fatalf("input %s cannot be given on the command line", k)
		default:
			args = append(args, "--"+k+"="+v)
		}
	}
	return args, e
}

// Guarantee: on the command line (no GITHUB_ACTIONS) too, a secret that a
// peer echoes never reaches the terminal in any form: not in a warning's or
// an error's message, nor in an output line. The terminal has no runner
// masking behind it: the redactor is all there is.
func TestCLIRedactsEchoedSecrets(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T) (inputs, env map[string]string, secrets []secret, code int)
	}{
		{"token endpoint repeats the password (warning and outputs)", func(t *testing.T) (map[string]string, map[string]string, []secret, int) {
			reg := startRegistry(t)
			const wrong = `ghp_exp1red/t+k"n&<|>x`
			reg.front.SetReject(http.StatusUnauthorized, "bad credentials: "+echo(testUser, wrong))
			return map[string]string{"image": reg.host + "/acme/public:1", "username": testUser, "password": wrong, "destination": "none"},
				nil, []secret{{testUser, wrong}}, ExitOK
		}},
		{"daemon error repeats the password (error)", func(t *testing.T) (map[string]string, map[string]string, []secret, int) {
			reg := startRegistry(t)
			eng := startEngine(t, func(w http.ResponseWriter, r *http.Request, call int) {
				if call == 1 {
					callError(w, http.StatusInternalServerError, "unauthorized: manifest access denied, "+echo(testUser, testPassword))
					return
				}
				callError(w, http.StatusNotFound, "pull access denied for acme/private, repository does not exist: "+echo(testUser, testPassword))
			})
			return map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": testPassword,
				"docker-host": eng.host, "retries": "0"}, nil, []secret{{testUser, testPassword}}, ExitFailed
		}},
		{"OIDC exchange error repeats the ID token (error)", func(t *testing.T) (map[string]string, map[string]string, []secret, int) {
			jwt := fakeJWT(t)
			env, _ := idTokenEndpoint(t, jwt, 0)
			exchange := provider(t, func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant",
					"error_description": "subject not allowed: " + echo("", r.PostForm.Get("subject_token"))})
			})
			return map[string]string{"image": "ghcr.io/acme/app:1", "auth": "oidc", "oidc-provider": "token-exchange",
				"token-exchange-url": exchange + "/token", "retries": "0"}, env, []secret{{"", jwt}}, ExitFailed
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inputs, env, secrets, code := tt.setup(t)
			args, e := cliArgs(t, inputs, env)
			s := runCLI(t, args, e, "")
			if s.code != code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", s.code, code, s.stdout, s.stderr)
			}
			for where, text := range map[string]string{"stdout": s.stdout, "stderr": s.stderr} {
				for _, sec := range secrets {
					for form, f := range sec.forms() {
						if strings.Contains(text, f) {
							t.Errorf("%s holds a secret %s: %q\n%s", where, form, f, text)
						}
					}
				}
			}
			if !strings.Contains(s.stderr, "secret=***") {
				t.Errorf("stderr shows no secret=***: the peer's echo never reached a message, and the test proves nothing:\n%s", s.stderr)
			}
		})
	}
}

// Guarantee: every method of the writer redacts what the terminal prints:
// a log line, each annotation's title and message, an output's value.
func TestTerminalWriterRedacts(t *testing.T) {
	const user, pw, token = "octocat", `pw"with/odd+chars<é>`, "registry-token-0001"
	var out, errOut bytes.Buffer
	r := newTerminalWriter(&out, &errOut)
	r.MaskCredentials(user, pw)
	r.Mask(token)
	said := echo(user, pw) + " " + echo("", token) + " raw=" + base64.RawStdEncoding.EncodeToString([]byte(user+":"+pw)) +
		" rawurl=" + base64.RawURLEncoding.EncodeToString([]byte(pw))
	r.Info("info %s", said)
	r.Notice("notice "+said, "notice msg "+said)
	r.Warning("warning "+said, "warning msg\n"+said)
	r.Error("error "+said, "error msg "+said)
	if err := r.Output("credential-error", "out "+said); err != nil {
		t.Fatal(err)
	}
	if err := r.Output("results", "multi\n"+said); err != nil {
		t.Fatal(err)
	}
	text := out.String() + errOut.String()
	for _, sec := range []secret{{user, pw}, {"", token}} {
		for form, f := range sec.forms() {
			if strings.Contains(text, f) {
				t.Errorf("the terminal shows the secret %s: %q\n%s", form, f, text)
			}
		}
	}
	// 7 texts carry the echo, with 6 forms of the password and 4 of the token each.
	if n := strings.Count(text, "***"); n < 7*10 {
		t.Errorf("%d *** for 70 redactions:\n%s", n, text)
	}
}
