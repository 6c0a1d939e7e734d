package action

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

// placeholder is a setting's name as a package below action writes it in
// a message ({KnownHosts}); none may reach the user.
var placeholder = regexp.MustCompile(`\{[A-Z][A-Za-z]*\}`)

// sshdeploy names its settings by the fields of sshdeploy.Inputs; action
// names every one as an input of action.yml, at its one boundary (named),
// in Parse's errors and in Open's.
func TestSSHErrorsNameInputs(t *testing.T) {
	md := testMetadata(t)
	declared := map[string]bool{}
	for _, in := range md.Inputs {
		declared[in.Name] = true
	}
	fields := reflect.TypeFor[sshdeploy.Inputs]()
	for i := range fields.NumField() {
		f := fields.Field(i).Name
		if !declared[sshInputs[f]] {
			t.Errorf("setting %s: %q is no input of action.yml", f, sshInputs[f])
		}
	}
	if len(sshInputs) != fields.NumField() {
		t.Errorf("sshInputs names %d settings, sshdeploy.Inputs has %d", len(sshInputs), fields.NumField())
	}
	for _, table := range []map[string]string{mirrorInputs, fileInputs, runInputs} {
		for s, in := range table {
			if !declared[in] {
				t.Errorf("setting %s: %q is no input of action.yml", s, in)
			}
		}
	}

	key, signer := sshKey(t, "")
	encrypted, _ := sshKey(t, "pass-7")
	known := fmt.Sprintf("[10.0.0.5]:22 %s", ssh.MarshalAuthorizedKey(signer.PublicKey()))
	for _, tt := range []struct {
		in   map[string]string
		want string
	}{
		{map[string]string{"ssh-host": "10.0.0.5", "ssh-key": key, "ssh-known-hosts": known, "ssh-insecure-ignore-host-key": "true"},
			`input "ssh-insecure-ignore-host-key": is true while ssh-known-hosts or ssh-fingerprint is set (drop ssh-insecure-ignore-host-key to verify host keys with the values given)`},
		{map[string]string{"ssh-host": "10.0.0.5", "ssh-key": encrypted, "ssh-known-hosts": known},
			`input "ssh-key-passphrase": the key in ssh-key is encrypted and no passphrase is set (pass its passphrase in ssh-key-passphrase from a secret)`},
		{map[string]string{"ssh-host": "10.0.0.5", "ssh-user": "a b", "ssh-port": "x", "ssh-known-hosts": known},
			`input "ssh-user": "a b" is not a valid user name` + "\n" +
				`input "ssh-port": port "x" is not a number from 1 to 65535` + "\n" +
				`input "ssh-key": is empty (ssh-key is required with ssh-host: put the private key in a secret and pass it, e.g. ssh-key: ${{ secrets.DEPLOY_KEY }})`},
		{map[string]string{"containerd-namespace": "default"},
			`input "containerd-namespace": "default": ghcr-pull pulls through containerd's CRI image service, as the kubelet does, and that always pulls into k8s.io (leave containerd-namespace at k8s.io (see docs/containerd.md))`},
	} {
		tt.in["image"] = "ghcr.io/acme/app:1"
		_, err := ParseConfig(getter(tt.in), md)
		if err == nil || err.Error() != tt.want {
			t.Errorf("error\n%v\nwant\n%s", err, tt.want)
		}
	}

	// Errors met while connecting name the inputs too: a host key the
	// known hosts do not hold, a host with no runtime at the sockets.
	reg := startRegistry(t)
	srv := sshtest.Start(t, signer.PublicKey(), sshtest.WithoutDockerCLI())
	other := sshtest.NewSigner(t, "ed25519")
	for _, tt := range []struct {
		known string
		want  []string
	}{
		{fmt.Sprintf("[127.0.0.1]:%d %s", srv.Port, ssh.MarshalAuthorizedKey(other.PublicKey())),
			[]string{"which matches neither ssh-known-hosts nor ssh-fingerprint"}},
		{srv.KnownHosts(""),
			[]string{"point remote-docker-socket or remote-containerd-socket at the host's runtime, or set remote-runtime"}},
	} {
		// No socket on the host answers: the runner's own daemon must not.
		s := runStep(t, map[string]string{"image": reg.host + "/acme/public:1", "auth": "anonymous", "retries": "0", "timeout": "20s",
			"ssh-host": "127.0.0.1", "ssh-port": fmt.Sprint(srv.Port), "ssh-key": key, "ssh-known-hosts": tt.known, "ssh-timeout": "5s",
			"remote-docker-socket": "/nonexistent/docker.sock", "remote-containerd-socket": "/nonexistent/containerd.sock"}, nil)
		if s.code != ExitFailed {
			t.Fatalf("exit %d, want %d:\n%s", s.code, ExitFailed, s.stdout)
		}
		for _, want := range tt.want {
			if !strings.Contains(s.stdout, want) || !strings.Contains(s.outputs["results"], want) {
				t.Errorf("the log or results lack %q:\n%s\nresults: %s", want, s.stdout, s.outputs["results"])
			}
		}
		for _, out := range []string{s.stdout, s.summary, s.outputs["results"]} {
			if p := placeholder.FindString(out); p != "" {
				t.Errorf("a setting's own name %s reached the user:\n%s", p, out)
			}
		}
	}
}

// mirror, imagefile, docker and ghcr name their settings too; the user
// reads the inputs, in the message and in error_class.
func TestSettingsNameInputs(t *testing.T) {
	md := testMetadata(t)
	ws := t.TempDir()
	if err := os.Mkdir(filepath.Join(ws, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		in   map[string]string
		want string
	}{
		{map[string]string{"mirrors": "mirror.gcr.io"},
			`input "mirrors": "mirror.gcr.io" is not <registry>=<mirror> (write one <registry>=<mirror> per line, e.g. docker.io=mirror.gcr.io)`},
		{map[string]string{"destination": "tar", "path": "dir"},
			`input "path": "dir" is a directory, and destination tar writes a file (name a file, e.g. images/app.tar)`},
	} {
		tt.in["image"] = "ghcr.io/acme/app:1"
		_, err := ParseConfig(getter(tt.in), md, InWorkspace(ws))
		if err == nil || err.Error() != tt.want {
			t.Errorf("error\n%v\nwant\n%s", err, tt.want)
		}
	}

	reg := startRegistry(t)
	s := runStep(t, map[string]string{"image": reg.host + "/acme/public:1", "auth": "anonymous", "retries": "0", "docker-host": "nowhere"}, nil)
	for _, want := range []string{`input \"docker-host\": unable to parse docker host`, `"error_class":"bad-input:docker-host"`} {
		if !strings.Contains(s.outputs["results"], want) {
			t.Errorf("results lack %s: %s\n%d %s %s", want, s.outputs["results"], s.code, s.stdout, s.stderr)
		}
	}
}

// Every {Setting} the packages below write in a message is one action
// names: a misspelt one would reach the user as it is.
func TestPlaceholdersAreNamed(t *testing.T) {
	known := merged(runInputs, fileInputs, mirrorInputs)
	found := 0
	for _, dir := range []string{"sshdeploy", "ghcr", "docker", "imagefile", "mirror"} {
		files, err := filepath.Glob(filepath.Join("..", dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			file, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					for _, p := range placeholder.FindAllString(lit.Value, -1) {
						found++
						if _, ok := known[strings.Trim(p, "{}")]; !ok {
							t.Errorf("%s: %s in %s is named by no table of action", name, p, lit.Value)
						}
					}
				}
				return true
			})
		}
	}
	if found == 0 {
		t.Fatal("no placeholder found: the scan is broken")
	}
}
