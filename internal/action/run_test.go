package action

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/ssh"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// step is what one run of the action left behind, as the runner sees it.
type step struct {
	code    int
	stdout  string // the log: lines, workflow commands, annotations
	stderr  string
	rawOut  string // GITHUB_OUTPUT as written
	outputs map[string]string
	summary string
}

func actionYAML(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../../action.yml")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// runStep runs the action as the runner would: GITHUB_ACTIONS=true, no
// arguments, inputs as INPUT_*, outputs and summary in temporary files.
func runStep(t *testing.T, inputs, env map[string]string) step {
	t.Helper()
	dir := t.TempDir()
	outFile, sumFile := filepath.Join(dir, "output"), filepath.Join(dir, "summary")
	e := map[string]string{"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": outFile, "GITHUB_STEP_SUMMARY": sumFile}
	for k, v := range env {
		e[k] = v
	}
	for k, v := range inputs {
		e["INPUT_"+strings.ToUpper(k)] = v
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := Run(ctx, nil, Env{Getenv: func(k string) string { return e[k] }, Stdin: strings.NewReader(""),
		Stdout: &stdout, Stderr: &stderr, Metadata: actionYAML(t)})
	s := step{code: code, stdout: stdout.String(), stderr: stderr.String()}
	out, _ := os.ReadFile(outFile)
	s.rawOut = string(out)
	s.outputs = parseOutputs(t, s.rawOut)
	sum, _ := os.ReadFile(sumFile)
	s.summary = string(sum)
	return s
}

// runCLI runs the action as a command-line tool.
func runCLI(t *testing.T, args []string, env map[string]string, stdin string) step {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := Run(ctx, args, Env{Getenv: func(k string) string { return env[k] }, Stdin: strings.NewReader(stdin),
		Stdout: &stdout, Stderr: &stderr, Metadata: actionYAML(t)})
	return step{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// testRegistry is a GHCR-like registry: token auth, user octocat with
// testPassword on every repository, acme/public readable by anyone,
// acme/private only with credentials.
type testRegistry struct {
	front *ghcrsim.Server
	host  string

	mu     sync.Mutex
	tokens []string // bearer tokens the token endpoint handed out
}

// testPassword has characters whose JSON, URL and HTML forms differ from
// the plain one.
const (
	testUser     = "octocat"
	testPassword = `ghp_s3cr3t/pa+ss"w&rd<x>`
)

func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	front, err := ghcrsim.New(ghcrsim.Options{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))})
	if err != nil {
		t.Fatal(err)
	}
	front.AddUser("admin", "adminpw", true, "*")
	front.AddUser(testUser, testPassword, false, "*")
	front.SetPublic("acme/public")
	r := &testRegistry{front: front}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/token" {
			front.ServeHTTP(w, req)
			return
		}
		rec := httptest.NewRecorder()
		front.ServeHTTP(rec, req)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		if rec.Code == http.StatusOK {
			if tok, _, ok := strings.Cut(strings.TrimPrefix(string(body), `{"access_token":"`), `"`); ok {
				r.mu.Lock()
				r.tokens = append(r.tokens, tok)
				r.mu.Unlock()
			}
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	for _, repo := range []string{"acme/public", "acme/private"} {
		ref, _ := name.ParseReference(r.host + "/" + repo + ":1")
		img, _ := random.Image(256, 1)
		if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"})); err != nil {
			t.Fatalf("push %s: %v", repo, err)
		}
	}
	front.ResetLog()
	r.tokens = nil // the pushes' tokens
	return r
}

func (r *testRegistry) issued() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...)
}

// sshKey is an ed25519 private key in OpenSSH PEM, encrypted with
// passphrase when it is not empty.
func sshKey(t *testing.T, passphrase string) (string, ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block)), signer
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// Guarantee: every secret input is masked before anything else is
// printed, even when the run stops at the first bad input.
func TestSecretInputsMaskedFirst(t *testing.T) {
	key, _ := sshKey(t, "key-passphrase-9")
	inputs := map[string]string{
		"image":              "", // bad input: the run stops early
		"username":           testUser,
		"password":           "ghp_input_password_1",
		"ssh-key":            key,
		"ssh-key-passphrase": "key-passphrase-9",
		"kubeconfig":         testKubeconfig("https://127.0.0.1:1", "kube-bearer-token-7"),
		"mirror-password":    "mirror-secret-3",
	}
	for name := range secretInputs {
		if _, ok := inputs[name]; !ok {
			t.Fatalf("secret input %s is not covered by this test", name)
		}
	}
	s := runStep(t, inputs, nil)
	if s.code != ExitBadInput {
		t.Fatalf("exit %d, want %d (bad image input)\n%s", s.code, ExitBadInput, s.stdout)
	}
	lines := strings.Split(strings.TrimRight(s.stdout, "\n"), "\n")
	masks := map[string]bool{}
	first := -1
	for i, l := range lines {
		v, ok := strings.CutPrefix(l, "::add-mask::")
		if !ok {
			first = i
			break
		}
		masks[v] = true
	}
	if first < 0 || !strings.HasPrefix(lines[first], "::error") {
		t.Fatalf("no error after the masks; the run proves nothing:\n%s", s.stdout)
	}
	want := []string{"ghp_input_password_1", "key-passphrase-9", "mirror-secret-3"}
	for _, l := range strings.Split(key+"\n"+inputs["kubeconfig"], "\n") {
		if strings.TrimSpace(l) != "" {
			want = append(want, strings.TrimSpace(l))
		}
	}
	for _, w := range want {
		if !masks[w] {
			t.Errorf("%q is not masked before the first other line %q", w, lines[first])
		}
	}
}

// Guarantee: the bearer tokens the registry's token endpoint hands back are
// masked before they are used.
func TestRegistryTokensMasked(t *testing.T) {
	reg := startRegistry(t)
	s := runStep(t, map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": testPassword,
		"destination": "none"}, nil)
	if s.code != ExitOK {
		t.Fatalf("exit %d:\n%s", s.code, s.stdout)
	}
	tokens := reg.issued()
	if len(tokens) == 0 {
		t.Fatal("the registry issued no token; the test proves nothing")
	}
	for _, tok := range tokens {
		if !strings.Contains(s.stdout, "::add-mask::"+tok+"\n") {
			t.Errorf("registry token %.20s… is not masked:\n%s", tok, s.stdout)
		}
	}
}

// Guarantee: no docker-login style config.json, nor any other file, is
// written: credentials travel only in the requests that need them.
func TestNoFileWritten(t *testing.T) {
	reg := startRegistry(t)
	home, dockerConfig := t.TempDir(), t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("DOCKER_CONFIG", dockerConfig)
	env := map[string]string{"HOME": home, "DOCKER_CONFIG": dockerConfig}
	for _, tc := range []struct{ image, password string }{
		{reg.host + "/acme/private:1", testPassword},    // accepted
		{reg.host + "/acme/public:1", "wrong-password"}, // rejected, anonymous fallback
	} {
		s := runStep(t, map[string]string{"image": tc.image, "username": testUser, "password": tc.password, "destination": "none"}, env)
		if s.code != ExitOK {
			t.Fatalf("%s: exit %d:\n%s", tc.image, s.code, s.stdout)
		}
	}
	for _, dir := range []string{home, dockerConfig} {
		_ = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if p != dir {
				t.Errorf("the run left %s behind", p)
			}
			return nil
		})
	}
}

// Guarantee: ssh-insecure-ignore-host-key is warned about, whether or not
// the host is then reached.
func TestInsecureHostKeyWarning(t *testing.T) {
	key, signer := sshKey(t, "")
	port := closedPort(t)
	for _, tc := range []struct {
		name   string
		policy map[string]string
		warn   bool
	}{
		{"insecure", map[string]string{"ssh-insecure-ignore-host-key": "true"}, true},
		{"known hosts", map[string]string{"ssh-known-hosts": fmt.Sprintf("[127.0.0.1]:%d %s", port, ssh.MarshalAuthorizedKey(signer.PublicKey()))}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := map[string]string{"image": "127.0.0.1:1/acme/app:1", "ssh-host": "127.0.0.1", "ssh-port": fmt.Sprint(port),
				"ssh-key": key, "ssh-timeout": "5s", "timeout": "20s", "retries": "0"}
			for k, v := range tc.policy {
				in[k] = v
			}
			s := runStep(t, in, nil)
			if s.code != ExitFailed {
				t.Fatalf("exit %d, want %d (the host is unreachable):\n%s", s.code, ExitFailed, s.stdout)
			}
			got := strings.Contains(s.stdout, "::warning title=ghcr-pull%3A SSH host keys are not verified::") &&
				strings.Contains(s.stdout, "ssh-insecure-ignore-host-key is true")
			if got != tc.warn {
				t.Errorf("warning given: %v, want %v:\n%s", got, tc.warn, s.stdout)
			}
		})
	}
}

// Guarantee: a registry's words reach the summary's HTML escaped.
func TestSummaryEscapesRegistryText(t *testing.T) {
	reg := startRegistry(t)
	reg.front.SetReject(http.StatusUnauthorized, "<script>alert(1)</script> | injected | cell")
	s := runStep(t, map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": "wrong-password",
		"destination": "none"}, nil)
	if s.code != ExitFailed {
		t.Fatalf("exit %d:\n%s", s.code, s.stdout)
	}
	if !strings.Contains(s.summary, "&lt;script&gt;") {
		t.Fatalf("the registry's words are not in the summary; the test proves nothing:\n%s", s.summary)
	}
	if strings.Contains(s.summary, "<script") {
		t.Errorf("unescaped HTML in the summary:\n%s", s.summary)
	}
	for _, l := range strings.Split(s.summary, "\n") {
		if !strings.HasPrefix(l, "| ") || strings.HasPrefix(l, "| Image") {
			continue
		}
		if n := strings.Count(strings.ReplaceAll(l, `\|`, ""), "|"); n != 7 {
			t.Errorf("table row has %d cell separators, want 7: %q", n, l)
		}
	}
}

// CLI mode: the password comes from --password-stdin or GHCR_PULL_PASSWORD,
// never from a flag; --help exits 0.
func TestCLIPassword(t *testing.T) {
	reg := startRegistry(t)
	img := reg.host + "/acme/private:1"
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		stdin    string
		wantCode int
		wantOut  string
	}{
		{"password on stdin", []string{"--username", testUser, "--destination", "none", "--anonymous-fallback", "false", "--password-stdin", img},
			nil, testPassword + "\n", ExitOK, "auth-mode: token"},
		{"password in GHCR_PULL_PASSWORD", []string{"--username", testUser, "--destination", "none", "--anonymous-fallback", "false", img},
			map[string]string{"GHCR_PULL_PASSWORD": testPassword}, "", ExitOK, "auth-mode: token"},
		{"wrong password on stdin is sent and rejected", []string{"--username", testUser, "--destination", "none", "--anonymous-fallback", "false", "--password-stdin", img},
			nil, "not-the-password\n", ExitFailed, "auth-mode: \n"},
		{"no password: anonymous, private image refused", []string{"--username", testUser, "--destination", "none", img},
			nil, "", ExitFailed, "auth-mode: \n"},
		{"password is never a flag", []string{"--password", testPassword, "--destination", "none", img}, nil, "", ExitBadInput, ""},
		{"help", []string{"--help"}, nil, "", ExitOK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := runCLI(t, tt.args, tt.env, tt.stdin)
			if s.code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", s.code, tt.wantCode, s.stdout, s.stderr)
			}
			if !strings.Contains(s.stdout, tt.wantOut) {
				t.Errorf("stdout lacks %q:\n%s", tt.wantOut, s.stdout)
			}
			if strings.Contains(s.stdout+s.stderr, testPassword) {
				t.Errorf("the password was printed")
			}
		})
	}
	if s := runCLI(t, []string{"--help"}, nil, ""); strings.Contains(s.stderr, "-password ") || !strings.Contains(s.stderr, "-password-stdin") {
		t.Errorf("--help offers a password flag or no --password-stdin:\n%s", s.stderr)
	}
}

// results names each failure's class, for a deploy job to branch on
// without reading the message.
func TestResultsNameTheErrorClass(t *testing.T) {
	reg := startRegistry(t)
	for _, tt := range []struct {
		name   string
		inputs map[string]string
		want   string
	}{
		{"wrong password, no fallback", map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": "wrong-password", "anonymous-fallback": "false"}, "rejected"},
		{"absent tag", map[string]string{"image": reg.host + "/acme/private:absent", "username": testUser, "password": testPassword}, "not-found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.inputs["destination"] = "none"
			s := runStep(t, tt.inputs, nil)
			if s.code != ExitFailed {
				t.Fatalf("exit %d:\n%s", s.code, s.stdout)
			}
			var results []ResultJSON
			if err := json.Unmarshal([]byte(s.outputs["results"]), &results); err != nil || len(results) != 1 {
				t.Fatalf("results %q: %v", s.outputs["results"], err)
			}
			if got := results[0].ErrorClass; got != tt.want {
				t.Errorf("error_class %q, want %q (error %q)", got, tt.want, results[0].Error)
			}
		})
	}
}

// testKubeconfig is a kubeconfig with a bearer token for server.
func testKubeconfig(server, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: %s
contexts:
- name: ctx
  context:
    cluster: c
    user: u
current-context: ctx
`, server, token)
}

// The kubeconfig's token is masked on its own, not only as the line that
// holds it, before the cluster is called: an API server that echoes it
// cannot print it.
func TestKubeconfigTokenMasked(t *testing.T) {
	reg := startRegistry(t)
	s := runStep(t, map[string]string{"image": reg.host + "/acme/private:1", "username": testUser, "password": testPassword,
		"destination": "kubernetes", "kubeconfig": testKubeconfig("https://127.0.0.1:1", "kube-bearer-token-7"), "kube-timeout": "5s"}, nil)
	if s.code != ExitFailed {
		t.Fatalf("exit %d, want %d (no API server there)\n%s", s.code, ExitFailed, s.stdout)
	}
	if !strings.Contains(s.stdout, "::add-mask::kube-bearer-token-7\n") {
		t.Errorf("the kubeconfig's token is not masked on its own:\n%s", s.stdout)
	}
	var results []ResultJSON
	if err := json.Unmarshal([]byte(s.outputs["results"]), &results); err != nil || len(results) != 1 || results[0].Runtime != "kubernetes" || results[0].Error == "" {
		t.Errorf("results %q (%v): want one failed kubernetes entry", s.outputs["results"], err)
	}
}

// Guarantee: with ssh-transfer relay, the relay's blob cache is removed
// when the step ends, on failure and on cancel (success: e2e TestRelay).
func TestRelayCacheRemoved(t *testing.T) {
	key, _ := sshKey(t, "")
	for _, tc := range []struct {
		name   string
		cancel bool
	}{{"failure", false}, {"cancel", true}} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			port := closedPort(t)
			if tc.cancel {
				// A host that accepts and never speaks: the step waits on it
				// until it is cancelled.
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				go func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						defer c.Close()
					}
				}()
				port = l.Addr().(*net.TCPAddr).Port
			}
			e := map[string]string{"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": filepath.Join(tmp, "out"), "GITHUB_STEP_SUMMARY": filepath.Join(tmp, "sum")}
			for k, v := range map[string]string{"image": "127.0.0.1:1/acme/app:1", "ssh-host": "127.0.0.1", "ssh-port": fmt.Sprint(port),
				"ssh-key": key, "ssh-insecure-ignore-host-key": "true", "ssh-transfer": "relay", "ssh-timeout": "30s", "timeout": "20s", "retries": "0"} {
				e["INPUT_"+strings.ToUpper(k)] = v
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				time.AfterFunc(500*time.Millisecond, cancel)
			}
			var out bytes.Buffer
			start := time.Now()
			code := Run(ctx, nil, Env{Getenv: func(k string) string { return e[k] }, Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out, Metadata: actionYAML(t)})
			if code != ExitFailed || (tc.cancel && time.Since(start) > 10*time.Second) {
				t.Fatalf("exit %d after %s, want %d\n%s", code, time.Since(start), ExitFailed, out.String())
			}
			if left, _ := filepath.Glob(filepath.Join(tmp, "ghcr-pull-relay-*")); len(left) > 0 {
				t.Errorf("the relay's cache is left: %v", left)
			}
		})
	}
}
