package action

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ghcr-pull/ghcr-pull/internal/oidc"
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
	for _, table := range []map[string]string{mirrorInputs, fileInputs, runInputs, kubeInputs, oidcInputs, clusterInputs} {
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

// kube names its settings too: in ParseConfig's errors, in those of a
// keyless cluster's endpoint, and in Prepull's, which reach the results.
func TestKubeErrorsNameInputs(t *testing.T) {
	md := testMetadata(t)
	kubeconfig := testKubeconfig("https://10.0.0.1:6443", "t0k")
	for _, tt := range []struct {
		in   map[string]string
		want string
	}{
		{map[string]string{"kubeconfig": "- [", "destination": "kubernetes"},
			`input "kubeconfig": is not a kubeconfig document (YAML or JSON) (pass the whole kubeconfig file's text, e.g. from a secret: kubeconfig: ${{ secrets.KUBECONFIG }})`},
		{map[string]string{"kubeconfig": kubeconfig, "destination": "kubernetes", "kube-context": "prod"},
			`input "kube-context": context "prod" is not in the kubeconfig (it has ctx) (set kube-context to one of the kubeconfig's contexts, or set current-context in it)`},
		{map[string]string{"kubeconfig": kubeconfig, "destination": "kubernetes", "kube-namespace": "Not_A_Name"},
			`input "kube-namespace": "Not_A_Name" is not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?') (use a namespace that exists, e.g. default)`},
		{map[string]string{"kubeconfig": kubeconfig, "destination": "kubernetes", "kube-node-selector": "a in ("},
			`input "kube-node-selector": "a in (" is not a label selector`},
		{map[string]string{"destination": "kubernetes", "kube-auth": "oidc", "kube-server": "http://k8s.example", "kube-audience": "k8s"},
			`input "kube-server": "http://k8s.example" is not an https URL of an API server (e.g. https://ABC123.gr7.eu-west-1.eks.amazonaws.com)`},
		{map[string]string{"destination": "kubernetes", "kube-auth": "oidc", "kube-server": "https://k8s.example", "kube-ca": "not a certificate", "kube-audience": "k8s"},
			`input "kube-ca": is neither PEM nor base64 (give the cluster's CA as PEM, or its certificate-authority-data)`},
	} {
		tt.in["image"] = "ghcr.io/acme/app:1"
		_, err := ParseConfig(getter(tt.in), md)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("error\n%v\nwant\n%s", err, tt.want)
		}
	}

	// Prepull's errors reach the results: a refused token, a selector
	// that matches no node.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer good-token" {
			http.Error(w, `{"kind":"Status","code":401,"message":"Unauthorized"}`, http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"items":[]}`)
	}))
	t.Cleanup(api.Close)
	reg := startRegistry(t)
	for _, tt := range []struct {
		token string
		want  []string
	}{
		{"stale-token", []string{`input \"kubeconfig\": the API server at ` + api.URL + ` refused the kubeconfig's credentials`, "renew the token or certificate in the kubeconfig", `"error_class":"bad-input:kubeconfig"`}},
		{"good-token", []string{`input \"kube-node-selector\": \"pool=nowhere\" matches no node`, "or leave kube-node-selector empty for every node", `"error_class":"bad-input:kube-node-selector"`}},
	} {
		s := runStep(t, map[string]string{"image": reg.host + "/acme/public:1", "auth": "anonymous", "retries": "0", "timeout": "20s",
			"destination": "kubernetes", "kubeconfig": testKubeconfig(api.URL, tt.token), "kube-node-selector": "pool=nowhere", "kube-timeout": "5s"}, nil)
		for _, want := range tt.want {
			if !strings.Contains(s.outputs["results"], want) {
				t.Errorf("results lack %s: %s\n%d %s", want, s.outputs["results"], s.code, s.stdout)
			}
		}
		for _, out := range []string{s.stdout, s.summary, s.outputs["results"]} {
			if p := placeholder.FindString(out); p != "" {
				t.Errorf("a setting's own name %s reached the user:\n%s", p, out)
			}
		}
	}
}

// oidc names its settings by Config's fields (and a cluster identity's
// Cluster, Form, Endpoint, CA); the user reads the inputs, at ParseConfig
// and in the exchange's errors.
func TestOIDCErrorsNameInputs(t *testing.T) {
	fields := reflect.TypeFor[oidc.Config]()
	for i := range fields.NumField() {
		switch f := fields.Field(i).Name; f {
		case "Registry", "Getenv", "HTTPClient": // the image's, the environment's, the caller's
		default:
			if _, ok := oidcInputs[f]; !ok {
				t.Errorf("setting %s of oidc.Config is named by no input in oidcInputs", f)
			}
		}
	}
	md := testMetadata(t)
	role := "arn:aws:iam::123456789012:role/deploy"
	for _, tt := range []struct {
		in   map[string]string
		want string
	}{
		{map[string]string{"auth": "oidc", "oidc-provider": "dockerhub"},
			`input "dockerhub-connection-id": is required with oidc-provider dockerhub (copy it from the Docker Hub organization's OIDC connection)`},
		{map[string]string{"auth": "oidc", "oidc-provider": "dockerhub", "dockerhub-connection-id": "c1"},
			`input "username": is required with oidc-provider dockerhub (set it to the Docker Hub organization user)`},
		{map[string]string{"auth": "oidc", "oidc-provider": "aws-ecr", "aws-role-arn": role},
			`input "aws-region": no region given and "ghcr.io" is not an ECR host (set aws-region, e.g. eu-west-1)`},
		{map[string]string{"auth": "oidc", "oidc-provider": "vault"},
			`input "oidc-provider": "vault" is not a provider (use aws-ecr, gcp, azure-acr, dockerhub or token-exchange)`},
		{map[string]string{"destination": "kubernetes", "kube-auth": "eks", "kube-cluster": "prod", "aws-role-arn": "deploy", "aws-region": "eu-west-1"},
			`input "aws-role-arn": "deploy" is not an IAM role ARN (kube-auth eks assumes it with the ID token, e.g. arn:aws:iam::123456789012:role/github-deploy)`},
		{map[string]string{"destination": "kubernetes", "kube-auth": "eks", "kube-cluster": "prod", "aws-role-arn": role},
			`input "aws-region": is required with kube-auth eks (set it to the cluster's region, e.g. eu-west-1)`},
		{map[string]string{"destination": "kubernetes", "kube-auth": "gke", "kube-cluster": "web", "gcp-workload-identity-provider": "projects/123/locations/global/workloadIdentityPools/p/providers/gh"},
			`input "kube-cluster": "web" is not a GKE cluster resource (use projects/<project id>/locations/<region or zone>/clusters/<name>)`},
	} {
		tt.in["image"] = "ghcr.io/acme/app:1"
		_, err := ParseConfig(getter(tt.in), md)
		if err == nil || err.Error() != tt.want {
			t.Errorf("error\n%v\nwant\n%s", err, tt.want)
		}
	}

	// The exchange's advice names the inputs too: Google's STS refusing
	// the ID token points at oidc-audience.
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"error":"unauthorized_client","error_description":"The audience does not match"}`)
	}))
	t.Cleanup(sts.Close)
	env, _ := idTokenEndpoint(t, fakeJWT(t), 0)
	env[oidc.EnvGCPSTS] = sts.URL
	s := runStep(t, map[string]string{"image": "europe-docker.pkg.dev/acme/apps/app:1", "auth": "oidc", "oidc-provider": "gcp", "retries": "0",
		"gcp-workload-identity-provider": "projects/123/locations/global/workloadIdentityPools/p/providers/gh"}, env)
	_, shown := logText(s.stdout)
	if s.code != ExitFailed || !strings.Contains(shown, "its allowed audience matches oidc-audience") {
		t.Errorf("exit %d, want the exchange's advice naming oidc-audience\n%s", s.code, shown)
	}
	if p := placeholder.FindString(s.stdout); p != "" {
		t.Errorf("a setting's own name %s reached the user:\n%s", p, s.stdout)
	}
}

// Every {Setting} the packages below write in a message is one action
// names, and so is every setting kube and oidc name in a failure.Bad: a
// misspelt one would reach the user as it is. kube's are named by
// kubeInputs (its run-time ones, kubeRunInputs, by runInputs too: the same
// names), oidc's by oidcInputs (in runInputs too: a keyless cluster's
// tokens are minted while pulling).
func TestPlaceholdersAreNamed(t *testing.T) {
	for s, in := range merged(kubeRunInputs, oidcInputs) {
		if runInputs[s] != in {
			t.Errorf("setting %s: runInputs names it %q, kubeInputs or oidcInputs %q", s, runInputs[s], in)
		}
	}
	known := merged(runInputs, fileInputs, mirrorInputs)
	found := 0
	for dir, known := range map[string]map[string]string{"sshdeploy": known, "ghcr": known, "docker": known, "imagefile": known, "mirror": known,
		"kube": kubeInputs, "oidc": oidcInputs} {
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
				if call, ok := n.(*ast.CallExpr); ok && (dir == "kube" || dir == "oidc") {
					if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Bad" && len(call.Args) == 3 {
						if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Value != `"image"` {
							found++
							if _, ok := known[strings.Trim(lit.Value, `"`)]; !ok {
								t.Errorf("%s: failure.Bad(%s, ...) names a setting no table of action names", name, lit.Value)
							}
						}
					}
				}
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
