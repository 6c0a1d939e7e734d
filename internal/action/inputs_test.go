package action

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

func getter(m map[string]string) Getter {
	return func(name string) string { return m[name] }
}

func TestParseConfig(t *testing.T) {
	base := func() map[string]string {
		return map[string]string{"image": "ghcr.io/acme/app:1.2.3", "username": "octocat", "password": "tok"}
	}
	tests := []struct {
		name      string
		edit      func(map[string]string)
		wantInput string // input named by the error; "" for success
		check     func(t *testing.T, c Config)
	}{
		{"defaults", nil, "", func(t *testing.T, c Config) {
			if c.Credentials.Mode != registryauth.ModeToken || !c.Fallback || c.Retries != 3 || c.Timeout != 10*time.Minute ||
				c.Destination != DestinationDocker || !c.Summary || c.AnonymousNotice != "" {
				t.Errorf("unexpected defaults: %+v", c)
			}
		}},
		{"kubernetes destination", func(m map[string]string) {
			m["destination"], m["kubeconfig"], m["kube-node-selector"] = "kubernetes", testKubeconfig("https://10.0.0.1:6443", "t0k"), "pool=web"
		}, "", func(t *testing.T, c Config) {
			if c.Kube == nil || c.Kube.Timeout != 5*time.Minute || c.Kube.Namespace != "default" || c.Kube.Selector.String() != "pool=web" {
				t.Errorf("kube config %+v", c.Kube)
			}
		}},
		{"kubernetes without kubeconfig", func(m map[string]string) { m["destination"] = "kubernetes" }, "kubeconfig", nil},
		{"kubeconfig without the kubernetes destination", func(m map[string]string) { m["kubeconfig"] = testKubeconfig("https://10.0.0.1:6443", "t0k") }, "kubeconfig", nil},
		{"bad kube-timeout", func(m map[string]string) {
			m["destination"], m["kubeconfig"], m["kube-timeout"] = "kubernetes", testKubeconfig("https://10.0.0.1:6443", "t0k"), "soon"
		}, "kube-timeout", nil},
		{"kubernetes and ssh-host together", func(m map[string]string) {
			m["destination"], m["kubeconfig"], m["ssh-host"] = "kubernetes", testKubeconfig("https://10.0.0.1:6443", "t0k"), "deploy@10.0.0.2"
		}, "ssh-host", nil},
		{"several images, commas and newlines, duplicates dropped", func(m map[string]string) {
			m["image"] = "ghcr.io/a/b:1, ghcr.io/a/c@sha256:" + strings.Repeat("a", 64) + "\n\nghcr.io/a/b:1\n"
		}, "", func(t *testing.T, c Config) {
			if len(c.Images) != 2 {
				t.Errorf("images = %d, want 2", len(c.Images))
			}
		}},
		{"empty password with auto is anonymous with a notice", func(m map[string]string) { m["password"] = "" }, "", func(t *testing.T, c Config) {
			if !c.Credentials.IsAnonymous() || !strings.Contains(c.AnonymousNotice, "fork") {
				t.Errorf("got %v / %q", c.Credentials, c.AnonymousNotice)
			}
		}},
		{"auth anonymous ignores the password", func(m map[string]string) { m["auth"] = "anonymous" }, "", func(t *testing.T, c Config) {
			if !c.Credentials.IsAnonymous() || c.AnonymousNotice == "" {
				t.Errorf("got %v", c.Credentials)
			}
		}},
		{"password kept verbatim", func(m map[string]string) { m["password"] = " tok with spaces " }, "", func(t *testing.T, c Config) {
			if c.Credentials.Password != " tok with spaces " {
				t.Errorf("password altered")
			}
		}},
		{"YAML booleans", func(m map[string]string) { m["anonymous-fallback"] = "False"; m["summary"] = "no" }, "", func(t *testing.T, c Config) {
			if c.Fallback || c.Summary {
				t.Errorf("booleans not parsed")
			}
		}},
		{"no image", func(m map[string]string) { m["image"] = " ,\n" }, "image", nil},
		{"bad image", func(m map[string]string) { m["image"] = "ghcr.io/Acme/App:1" }, "image", nil},
		{"bad image chars", func(m map[string]string) { m["image"] = "ghcr.io/acme/app:bad tag" }, "image", nil},
		{"auth token without password", func(m map[string]string) { m["auth"] = "token"; m["password"] = "" }, "password", nil},
		{"unknown auth", func(m map[string]string) { m["auth"] = "kerberos" }, "auth", nil},
		{"bad bool", func(m map[string]string) { m["anonymous-fallback"] = "maybe" }, "anonymous-fallback", nil},
		{"bad platform", func(m map[string]string) { m["platform"] = "amd64" }, "platform", nil},
		{"bad destination", func(m map[string]string) { m["destination"] = "podman" }, "destination", nil},
		{"bad retries", func(m map[string]string) { m["retries"] = "-1" }, "retries", nil},
		{"bad timeout", func(m map[string]string) { m["timeout"] = "10" }, "timeout", nil},
		{"bad quota-guard", func(m map[string]string) { m["quota-guard"] = "100" }, "quota-guard", nil},
		{"bad mirrors", func(m map[string]string) { m["mirrors"] = "mirror.gcr.io" }, "mirrors", nil},
		{"mirror user without password", func(m map[string]string) { m["mirrors"] = "docker.io=mirror.gcr.io"; m["mirror-username"] = "u" }, "mirror-password", nil},
		{"mirror password without mirrors", func(m map[string]string) { m["mirror-password"] = "p" }, "mirror-password", nil},
		{"mirrors with their own credentials", func(m map[string]string) {
			m["mirrors"] = "docker.io=mirror.gcr.io\ndocker.io=http://10.0.0.5:5000"
			m["mirror-username"], m["mirror-password"] = "mu", " mp "
		}, "", func(t *testing.T, c Config) {
			if got := c.Mirrors.For("docker.io"); len(got) != 2 || got[0].Host != "mirror.gcr.io" || !got[1].PlainHTTP {
				t.Errorf("mirrors %+v", got)
			}
			if c.MirrorCredentials.Username != "mu" || c.MirrorCredentials.Password != " mp " {
				t.Errorf("mirror credentials %v", c.MirrorCredentials)
			}
			if c.Credentials.Password == c.MirrorCredentials.Password {
				t.Errorf("mirror credentials mixed with the registry's")
			}
			if len(c.InsecureRegistries) != 1 || c.InsecureRegistries[0] != "10.0.0.5:5000" {
				t.Errorf("an http:// mirror is not allowed plain HTTP: %v", c.InsecureRegistries)
			}
		}},
		{"quota-guard on by default", nil, "", func(t *testing.T, c Config) {
			if !c.QuotaGuard {
				t.Errorf("quota-guard is off by default")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base()
			if tt.edit != nil {
				tt.edit(m)
			}
			c, err := ParseConfig(getter(m), testMetadata(t))
			if tt.wantInput == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				tt.check(t, c)
				return
			}
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input != tt.wantInput {
				t.Fatalf("error %v does not name input %q", err, tt.wantInput)
			}
			if bad.Fix == "" {
				t.Errorf("error for %q says nothing about what to do", tt.wantInput)
			}
		})
	}
}

func TestEnvGetter(t *testing.T) {
	env := map[string]string{"INPUT_ANONYMOUS-FALLBACK": "false", "INPUT_IMAGE": "x"}
	g := EnvGetter(func(k string) string { return env[k] })
	if g("anonymous-fallback") != "false" || g("image") != "x" {
		t.Errorf("runner's INPUT_ naming not followed")
	}
}

func testMetadata(t *testing.T) Metadata {
	t.Helper()
	data, err := os.ReadFile("../../action.yml")
	if err != nil {
		t.Fatal(err)
	}
	md, err := ParseMetadata(data)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

// newKeyPEM is a fresh ed25519 private key as ssh-key takes it.
func newKeyPEM(t *testing.T) string {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block))
}

func TestParseConfigSSH(t *testing.T) {
	key := newKeyPEM(t)
	tests := []struct {
		name    string
		in      map[string]string
		wantErr string // substring; "" for success
	}{
		{"no hosts, no ssh", map[string]string{}, ""},
		{"host without key", map[string]string{"ssh-host": "deploy@10.0.0.5"}, "ssh-key"},
		{"host without known hosts shows keyscan", map[string]string{"ssh-host": "10.0.0.5:2222", "ssh-key": key}, "ssh-keyscan"},
		{"fingerprint", map[string]string{"ssh-host": "10.0.0.5", "ssh-key": key, "ssh-fingerprint": "SHA256:" + strings.Repeat("A", 43)}, ""},
		{"insecure opt-out", map[string]string{"ssh-host": "10.0.0.5", "ssh-key": key, "ssh-insecure-ignore-host-key": "true"}, ""},
		{"bad concurrency", map[string]string{"ssh-concurrency": "0"}, "ssh-concurrency"},
		{"bad pull-local", map[string]string{"pull-local": "sometimes"}, "pull-local"},
		{"relay", map[string]string{"ssh-host": "10.0.0.5", "ssh-key": key, "ssh-insecure-ignore-host-key": "true", "ssh-transfer": "Relay"}, ""},
		{"direct", map[string]string{"ssh-transfer": "direct"}, ""},
		{"bad ssh-transfer", map[string]string{"ssh-host": "10.0.0.5", "ssh-key": key, "ssh-insecure-ignore-host-key": "true", "ssh-transfer": "scp"}, `input "ssh-transfer": "scp" is not a transfer`},
		{"relay without hosts", map[string]string{"ssh-transfer": "relay"}, `input "ssh-transfer": is relay, but ssh-host names no host`},
		{"relay-cache-max", map[string]string{"relay-cache-max": "512 MiB"}, ""},
		{"relay-cache-max not a size", map[string]string{"relay-cache-max": "lots"}, `input "relay-cache-max": "lots" is not a size`},
		{"relay-cache-max zero", map[string]string{"relay-cache-max": "0GiB"}, `input "relay-cache-max"`},
		{"relay-cache-max overflows", map[string]string{"relay-cache-max": "9999999999TiB"}, `input "relay-cache-max"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{"image": "ghcr.io/a/b:1"}
			for k, v := range tt.in {
				m[k] = v
			}
			c, err := ParseConfig(getter(m), testMetadata(t))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if (m["ssh-host"] != "") != (c.SSH != nil) {
					t.Errorf("SSH settings = %v", c.SSH)
				}
				if want := map[string]int64{"": 20 << 30, "512 MiB": 512 << 20}[m["relay-cache-max"]]; c.RelayCacheMax != want {
					t.Errorf("RelayCacheMax = %d for %q, want %d", c.RelayCacheMax, m["relay-cache-max"], want)
				}
				if c.Relay != strings.EqualFold(m["ssh-transfer"], "relay") {
					t.Errorf("Relay = %v for ssh-transfer %q", c.Relay, m["ssh-transfer"])
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v lacks %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error quotes the key")
			}
		})
	}
}

func TestParseConfigPath(t *testing.T) {
	ws := t.TempDir()
	elsewhere := t.TempDir()
	tests := []struct {
		name      string
		in        map[string]string
		opt       ParseOption
		wantInput string // input the error names; "" for success
		wantPath  string
		wantShown string
	}{
		{"oci-layout, relative: in the workspace", map[string]string{"destination": "oci-layout", "path": "images/layout"}, InWorkspace(ws), "", ws + "/images/layout", "images/layout"},
		{"tar, relative", map[string]string{"destination": "tar", "path": "app.tar"}, InWorkspace(ws), "", ws + "/app.tar", "app.tar"},
		{"destination is case-insensitive", map[string]string{"destination": "TAR", "path": "app.tar"}, InWorkspace(ws), "", ws + "/app.tar", "app.tar"},
		{"outside the workspace", map[string]string{"destination": "tar", "path": elsewhere + "/app.tar"}, InWorkspace(ws), "path", "", ""},
		{"command line: anywhere", map[string]string{"destination": "tar", "path": elsewhere + "/app.tar"}, InDir(ws), "", elsewhere + "/app.tar", elsewhere + "/app.tar"},
		{"path without a file destination", map[string]string{"path": "app.tar"}, InWorkspace(ws), "path", "", ""},
		{"file destination without path", map[string]string{"destination": "oci-layout"}, InWorkspace(ws), "path", "", ""},
		{"ssh-host with a file destination", map[string]string{"destination": "tar", "path": "app.tar", "ssh-host": "10.0.0.5"}, InWorkspace(ws), "ssh-host", "", ""},
		{"tar with two images", map[string]string{"destination": "tar", "path": "app.tar", "image": "ghcr.io/a/b:1,ghcr.io/a/c:1"}, InWorkspace(ws), "image", "", ""},
		{"oci-layout with two images", map[string]string{"destination": "oci-layout", "path": "l", "image": "ghcr.io/a/b:1,ghcr.io/a/c:1"}, InWorkspace(ws), "", ws + "/l", "l"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseWith(t, tt.in, tt.opt, tt.wantInput)
			if tt.wantInput == "" && (err != nil || c.Path != tt.wantPath || c.PathShown != tt.wantShown) {
				t.Fatalf("got %q shown %q, %v; want %q shown %q", c.Path, c.PathShown, err, tt.wantPath, tt.wantShown)
			}
		})
	}
}

// parseWith parses in (over image: ghcr.io/a/b:1); with wantInput set, the
// error must be a bad input naming it, with a fix.
func parseWith(t *testing.T, in map[string]string, opt ParseOption, wantInput string) (Config, error) {
	t.Helper()
	m := map[string]string{"image": "ghcr.io/a/b:1"}
	for k, v := range in {
		m[k] = v
	}
	c, err := ParseConfig(getter(m), testMetadata(t), opt)
	if wantInput != "" {
		var bad *failure.BadInput
		if !errors.As(err, &bad) || bad.Input != wantInput || bad.Fix == "" {
			t.Fatalf("error %v does not name input %q with a fix", err, wantInput)
		}
	}
	return c, err
}

func TestParseConfigCachePath(t *testing.T) {
	ws := t.TempDir()
	elsewhere := t.TempDir()
	notLayout := filepath.Join(ws, "notes")
	if err := os.MkdirAll(notLayout, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(notLayout, "a.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		in        map[string]string
		opt       ParseOption
		wantInput string // input the error names; "" for success
		wantPath  string
	}{
		{"relative: in the workspace", map[string]string{"cache-path": ".cache/ghcr-pull"}, InWorkspace(ws), "", ws + "/.cache/ghcr-pull"},
		{"command line: anywhere", map[string]string{"cache-path": elsewhere + "/c"}, InDir(ws), "", elsewhere + "/c"},
		{"outside the workspace", map[string]string{"cache-path": elsewhere + "/c"}, InWorkspace(ws), "cache-path", ""},
		{"a directory that is not a layout", map[string]string{"cache-path": "notes"}, InWorkspace(ws), "cache-path", ""},
		{"with a file destination", map[string]string{"cache-path": "c", "destination": "oci-layout", "path": "l"}, InWorkspace(ws), "cache-path", ""},
		{"with destination none", map[string]string{"cache-path": "c", "destination": "none"}, InWorkspace(ws), "cache-path", ""},
		{"with ssh-host, direct", map[string]string{"cache-path": "c", "ssh-host": "10.0.0.5"}, InWorkspace(ws), "cache-path", ""},
		{"with ssh-host and ssh-transfer relay", map[string]string{"cache-path": "c", "ssh-host": "10.0.0.5", "ssh-transfer": "relay", "ssh-key": newKeyPEM(t), "ssh-insecure-ignore-host-key": "true"}, InWorkspace(ws), "", ws + "/c"},
		{"unset", map[string]string{}, InWorkspace(ws), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseWith(t, tt.in, tt.opt, tt.wantInput)
			if tt.wantInput == "" && (err != nil || c.CachePath != tt.wantPath) {
				t.Fatalf("got %q, %v; want %q", c.CachePath, err, tt.wantPath)
			}
		})
	}
}
