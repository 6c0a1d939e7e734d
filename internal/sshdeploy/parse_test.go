package sshdeploy

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestParseHosts(t *testing.T) {
	tests := []struct {
		in   string
		want []Host
		bad  string // part of the problem text; "" means valid
	}{
		{in: "example.com", want: []Host{{"deploy", "example.com", 2200}}},
		{in: "root@10.0.0.1:22", want: []Host{{"root", "10.0.0.1", 22}}},
		{in: "a.example.com, ci@b.example.com:2222\n\n  c.example.com  \r\n", want: []Host{
			{"deploy", "a.example.com", 2200}, {"ci", "b.example.com", 2222}, {"deploy", "c.example.com", 2200},
		}},
		{in: "[2001:db8::1]:2222", want: []Host{{"deploy", "2001:db8::1", 2222}}},
		{in: "u@[2001:db8::1]", want: []Host{{"u", "2001:db8::1", 2200}}},
		{in: "2001:db8::1", want: []Host{{"deploy", "2001:db8::1", 2200}}},
		{in: "ssh://u@h:23", want: []Host{{"u", "h", 23}}},
		{in: "", bad: "names no host"},
		{in: " , \n", bad: "names no host"},
		{in: "h:0", bad: "from 1 to 65535"},
		{in: "h:99999", bad: "from 1 to 65535"},
		{in: "h:ssh", bad: "from 1 to 65535"},
		{in: "h:", bad: "from 1 to 65535"},
		{in: "@h", bad: "user before @ is empty"},
		{in: "u@", bad: "host is empty"},
		{in: "[2001:db8::1", bad: "not closed"},
		{in: "[::1]x", bad: "only :port"},
		{in: "2001:db8::zz:1", bad: "IPv6"},
		{in: "-oProxyCommand=x", bad: "cannot start with -"},
		{in: "host name", bad: "space"},
		{in: "http://h/x", bad: "slash"},
		{in: "h$x", bad: "not a valid host name"},
		{in: "a, a", bad: "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseHosts(tt.in, "deploy", 2200)
			if tt.bad != "" {
				var ie *failure.BadInput
				if !errors.As(err, &ie) || ie.Input != "Hosts" || !strings.Contains(ie.Error(), tt.bad) {
					t.Fatalf("err = %v, want a Hosts error with %q", err, tt.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHostForms(t *testing.T) {
	h := Host{"root", "2001:db8::1", 22}
	if h.Addr() != "[2001:db8::1]:22" || h.String() != "root@[2001:db8::1]:22" {
		t.Fatalf("Addr %s String %s", h.Addr(), h)
	}
}

func TestParseProxyJump(t *testing.T) {
	got, err := parseProxyJump("bastion.example.com", "", 0)
	if err != nil || !reflect.DeepEqual(got, []Host{{"root", "bastion.example.com", 22}}) {
		t.Fatalf("got %v, %v", got, err)
	}
	got, err = parseProxyJump("a@b1:2201,b2", "u", 22)
	if err != nil || !reflect.DeepEqual(got, []Host{{"a", "b1", 2201}, {"u", "b2", 22}}) {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, err := parseProxyJump("  ", "u", 22); got != nil || err != nil {
		t.Fatalf("empty: %v %v", got, err)
	}
	var ie *failure.BadInput
	if _, err := parseProxyJump("b:x", "u", 22); !errors.As(err, &ie) || ie.Input != "ProxyJump" {
		t.Fatalf("err = %v, want ProxyJump", err)
	}
}

// keyForms returns the private keys users paste, by name.
func keyForms(t *testing.T) map[string]struct {
	pem        string
	passphrase string
} {
	t.Helper()
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey := sshtest.RSAKey()
	openssh := func(k any) string {
		b, err := ssh.MarshalPrivateKey(k, "c")
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(b))
	}
	encrypted := func(k any, pass string) string {
		b, err := ssh.MarshalPrivateKeyWithPassphrase(k, "c", []byte(pass))
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(b))
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(edKey)
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	//lint:ignore SA1019 legacy encrypted PEM keys are what old ssh-keygen wrote, and users still hold them.
	legacy, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey), []byte("old secret"), x509.PEMCipherAES128) //nolint:staticcheck
	if err != nil {
		t.Fatal(err)
	}
	return map[string]struct {
		pem        string
		passphrase string
	}{
		"openssh ed25519":           {pem: openssh(edKey)},
		"openssh ecdsa":             {pem: openssh(ecKey)},
		"openssh rsa":               {pem: openssh(rsaKey)},
		"pem pkcs1 rsa":             {pem: string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}))},
		"pem sec1 ecdsa":            {pem: string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))},
		"pem pkcs8 ed25519":         {pem: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))},
		"openssh ed25519 encrypted": {pem: encrypted(edKey, "correct horse"), passphrase: "correct horse"},
		"openssh rsa encrypted":     {pem: encrypted(rsaKey, "rsa pass 42"), passphrase: "rsa pass 42"},
		"pem rsa encrypted legacy":  {pem: string(pem.EncodeToMemory(legacy)), passphrase: "old secret"},
	}
}

func TestParsePrivateKey(t *testing.T) {
	for name, k := range keyForms(t) {
		t.Run(name, func(t *testing.T) {
			if _, err := parsePrivateKey(k.pem, k.passphrase); err != nil {
				t.Fatal(err)
			}
			// Secrets pasted with CRLF, with surrounding blanks, or with
			// line breaks written as \n still work.
			if _, err := parsePrivateKey("\n  "+strings.ReplaceAll(k.pem, "\n", "\r\n"), k.passphrase); err != nil {
				t.Fatalf("CRLF: %v", err)
			}
			if _, err := parsePrivateKey(strings.ReplaceAll(strings.TrimSpace(k.pem), "\n", `\n`), k.passphrase); err != nil {
				t.Fatalf(`literal \n: %v`, err)
			}
			if k.passphrase == "" {
				// A passphrase for a plain key is harmless.
				if _, err := parsePrivateKey(k.pem, "unneeded"); err != nil {
					t.Fatal(err)
				}
				return
			}
			_, err := parsePrivateKey(k.pem, "")
			wantInput(t, err, "KeyPassphrase", "encrypted and no passphrase")
			_, err = parsePrivateKey(k.pem, "wrong "+k.passphrase)
			wantInput(t, err, "KeyPassphrase", "wrong passphrase")
			if strings.Contains(err.Error(), k.passphrase) {
				t.Fatalf("error quotes the passphrase: %v", err)
			}
		})
	}
}

func TestParsePrivateKeyErrors(t *testing.T) {
	pub := string(ssh.MarshalAuthorizedKey(sshtest.NewSigner(t, "ed25519").PublicKey()))
	tests := []struct{ name, key, problem string }{
		{"empty", "  \n", "is empty"},
		{"public key", pub, "public key"},
		{"no pem", "AAAAB3NzaC1yc2E", "no -----BEGIN"},
		{"truncated", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n", "cannot be parsed"},
		{"encrypted pkcs8", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted PKCS#8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parsePrivateKey(tt.key, "")
			wantInput(t, err, "Key", tt.problem)
		})
	}
}

func wantInput(t *testing.T, err error, input, problem string) {
	t.Helper()
	var ie *failure.BadInput
	if !errors.As(err, &ie) {
		t.Fatalf("err = %v (%T), want *failure.BadInput for %s", err, err, input)
	}
	if ie.Input != input || !strings.Contains(ie.Error(), problem) {
		t.Fatalf("err = %v, want input %s and %q", err, input, problem)
	}
}

func TestParseFingerprints(t *testing.T) {
	k := sshtest.NewSigner(t, "ed25519").PublicKey()
	fp := ssh.FingerprintSHA256(k)
	raw := strings.TrimPrefix(fp, "SHA256:")
	k2 := sshtest.NewSigner(t, "ecdsa").PublicKey()
	fp2 := ssh.FingerprintSHA256(k2)
	tests := []struct {
		name, in string
		want     []string
		problem  string
	}{
		{name: "one", in: fp, want: []string{fp}},
		{name: "padded", in: fp + "=", want: []string{fp}},
		{name: "lower prefix", in: "sha256:" + raw, want: []string{fp}},
		{name: "several", in: fp + ", " + fp2 + "\n" + fp, want: []string{fp, fp2}},
		{name: "ssh-keygen -l line", in: "256 " + fp + " root@host (ED25519)\n# comment\n", want: []string{fp}},
		{name: "md5", in: "MD5:12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0", problem: "MD5"},
		{name: "bare md5", in: "12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0", problem: "MD5"},
		{name: "short", in: "SHA256:abc", problem: "not a SHA256 fingerprint"},
		{name: "no fingerprint", in: fp + "\nssh-ed25519 AAAA", problem: "line 2 holds no SHA256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text, err := parseFingerprints(tt.in)
			if tt.problem != "" {
				wantInput(t, err, "Fingerprints", tt.problem)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(text, tt.want) {
				t.Fatalf("got %v, want %v", text, tt.want)
			}
		})
	}
}

func TestParseHostKeyPolicyErrors(t *testing.T) {
	k := sshtest.NewSigner(t, "ed25519").PublicKey()
	line := "h " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	tests := []struct {
		name, known, fps string
		insecure         bool
		input, problem   string
	}{
		{name: "bare key", known: "# c\n" + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))), input: "KnownHosts", problem: "line 2: is a bare public key"},
		{name: "bad base64", known: line + "\nh ssh-ed25519 !!!", input: "KnownHosts", problem: "line 2"},
		{name: "type mismatch", known: "h ssh-rsa " + strings.Fields(line)[2], input: "KnownHosts", problem: "line 1"},
		{name: "comments only", known: "# nothing\n\n", input: "KnownHosts", problem: "only comments"},
		{name: "insecure and known", known: line, insecure: true, input: "InsecureIgnoreHostKey", problem: "while {KnownHosts}"},
		{name: "bad fingerprint", fps: "SHA256:x", input: "Fingerprints", problem: "not a SHA256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseHostKeyPolicy(tt.known, tt.fps, tt.insecure)
			wantInput(t, err, tt.input, tt.problem)
		})
	}
}

func TestCheckHosts(t *testing.T) {
	k := sshtest.NewSigner(t, "ed25519").PublicKey()
	a := Host{"root", "a.example", 22}
	b := Host{"root", "b.example", 2222}
	bastion := Host{"jump", "bastion.example", 22}

	empty, err := parseHostKeyPolicy("", "", false)
	if err != nil {
		t.Fatal(err)
	}
	err = empty.CheckHosts([]Host{a, b}, nil)
	wantInput(t, err, "KnownHosts", "neither {KnownHosts} nor {Fingerprints}")
	for _, want := range []string{"`ssh-keyscan -p 22 a.example`", "`ssh-keyscan -p 2222 b.example`", "{InsecureIgnoreHostKey}"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s: %v", want, err)
		}
	}
	err = empty.CheckHosts([]Host{a}, []Host{bastion})
	for _, want := range []string{"`ssh-keyscan -p 22 bastion.example`", "`ssh -p 22 jump@bastion.example ssh-keyscan -p 22 a.example`"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s: %v", want, err)
		}
	}

	known := knownhosts.Line([]string{"a.example"}, k) + "\n" + knownhosts.Line([]string{knownhosts.HashHostname("[b.example]:2222")}, k)
	p, err := parseHostKeyPolicy(known, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckHosts([]Host{a, b}, nil); err != nil {
		t.Fatalf("known (plain and hashed [host]:port): %v", err)
	}
	c := Host{"root", "c.example", 2022}
	err = p.CheckHosts([]Host{a, c}, []Host{bastion})
	wantInput(t, err, "KnownHosts", "no entry for bastion.example, [c.example]:2022")
	if !strings.Contains(err.Error(), "ssh-keyscan -p 2022 c.example") {
		t.Errorf("no keyscan hint: %v", err)
	}
	// b on port 22 is not b on 2222.
	err = p.CheckHosts([]Host{{"root", "b.example", 22}}, nil)
	wantInput(t, err, "KnownHosts", "no entry for b.example")

	fp, _ := parseHostKeyPolicy("", ssh.FingerprintSHA256(k), false)
	if err := fp.CheckHosts([]Host{a, c}, nil); err != nil {
		t.Fatalf("fingerprints cover every host: %v", err)
	}
	if err := insecureIgnoreHostKey().CheckHosts([]Host{a}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	key := keyForms(t)["openssh ed25519"].pem
	k := sshtest.NewSigner(t, "ed25519").PublicKey()
	good := Inputs{
		Hosts:        "a.example\nu@b.example:2200",
		User:         "deploy",
		Port:         "2022",
		Key:          key,
		KnownHosts:   knownhosts.Line([]string{"[a.example]:2022", "[b.example]:2200", "[bastion]:2022"}, k),
		ProxyJump:    "bastion",
		DockerSocket: "unix:///run/user/1000/docker.sock",
		Timeout:      "45",
	}
	s, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Hosts, []Host{{"deploy", "a.example", 2022}, {"u", "b.example", 2200}}) ||
		!reflect.DeepEqual(s.config.ProxyJump, []Host{{"deploy", "bastion", 2022}}) ||
		s.dockerSocket != "/run/user/1000/docker.sock" || s.config.Timeout.Seconds() != 45 || s.config.Signer == nil ||
		s.runtime != kindAuto || s.containerdSocket != "/run/containerd/containerd.sock" {
		t.Fatalf("settings %+v", s)
	}

	bad := Inputs{
		Hosts:                 "a.example:x",
		Port:                  "0",
		Key:                   "nope",
		InsecureIgnoreHostKey: "yes please",
		DockerSocket:          "tcp://1.2.3.4:2375",
		Timeout:               "-1s",
		Runtime:               "cri-o",
		ContainerdSocket:      "run/containerd.sock",
		ContainerdNamespace:   "default",
	}
	_, err = Parse(bad)
	if err == nil {
		t.Fatal("no error")
	}
	for _, input := range []string{"Hosts", "Port", "Key", "InsecureIgnoreHostKey", "DockerSocket", "Timeout",
		"Runtime", "ContainerdSocket", "ContainerdNamespace"} {
		if !strings.Contains(err.Error(), `input "`+input+`"`) {
			t.Errorf("error does not name %s: %v", input, err)
		}
	}

	missing := good
	missing.KnownHosts = ""
	_, err = Parse(missing)
	wantInput(t, err, "KnownHosts", "ssh-keyscan -p 2022 bastion")
}

// TestLegacyPEMWrongPassphrase: legacy PEM encryption checks only its CBC
// padding, so about one wrong passphrase in 256 decrypts to garbage DER.
// x/crypto maps ASN.1 structural errors of that garbage to a wrong
// password, but not syntax errors ("non-minimal tag"), which surfaced as
// an unreadable key and made TestParsePrivateKey flaky. The loop runs until
// it has met such a passphrase, so the case is always exercised.
func TestLegacyPEMWrongPassphrase(t *testing.T) {
	key := sshtest.RSAKey()
	//lint:ignore SA1019 legacy encrypted PEM keys are what old ssh-keygen wrote, and users still hold them.
	block, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key), []byte("old secret"), x509.PEMCipherAES128) //nolint:staticcheck
	if err != nil {
		t.Fatal(err)
	}
	text := string(pem.EncodeToMemory(block))
	syntaxSeen := 0
	for i := 0; syntaxSeen < 3; i++ {
		if i == 2_000_000 {
			t.Fatal("no wrong passphrase decrypting to malformed DER in 2M tries")
		}
		pass := fmt.Sprintf("wrong %d", i)
		//lint:ignore SA1019 the oracle: what the decryption itself yields.
		der, derr := x509.DecryptPEMBlock(block, []byte(pass)) //nolint:staticcheck
		if derr != nil {
			continue
		}
		var syn asn1.SyntaxError
		if _, perr := x509.ParsePKCS1PrivateKey(der); !errors.As(perr, &syn) {
			continue
		}
		syntaxSeen++
		_, err := parsePrivateKey(text, pass)
		wantInput(t, err, "KeyPassphrase", "wrong passphrase")
	}
}

// The remote runtime inputs, parsed and defaulted once; with no host they
// are still checked, and no Settings come back.
func TestParseRemoteRuntime(t *testing.T) {
	key := keyForms(t)["openssh ed25519"].pem
	tests := []struct {
		name             string
		in               Inputs
		wantInput        string // "" for success
		runtime          runtimeKind
		docker, ctrdSock string
	}{
		{"defaults", Inputs{}, "", kindAuto, "/var/run/docker.sock", "/run/containerd/containerd.sock"},
		{"containerd on k3s", Inputs{Runtime: "Containerd", ContainerdSocket: "/run/k3s/containerd/containerd.sock"}, "",
			kindContainerd, "/var/run/docker.sock", "/run/k3s/containerd/containerd.sock"},
		{"sockets as unix URLs", Inputs{DockerSocket: "unix:///run/user/1000/docker.sock", ContainerdSocket: "unix:///run/containerd/containerd.sock"}, "",
			kindAuto, "/run/user/1000/docker.sock", "/run/containerd/containerd.sock"},
		{"docker", Inputs{Runtime: "docker"}, "", kindDocker, "/var/run/docker.sock", "/run/containerd/containerd.sock"},
		{"podman", Inputs{Runtime: " Podman "}, "", kindPodman, "/var/run/docker.sock", "/run/containerd/containerd.sock"},
		{"explicit k8s.io", Inputs{ContainerdNamespace: "k8s.io"}, "", kindAuto, "/var/run/docker.sock", "/run/containerd/containerd.sock"},
		{"unknown runtime", Inputs{Runtime: "cri-o"}, "Runtime", "", "", ""},
		{"relative containerd socket", Inputs{ContainerdSocket: "run/containerd.sock"}, "ContainerdSocket", "", "", ""},
		{"containerd socket with control characters", Inputs{ContainerdSocket: "/run/c.sock\x00x"}, "ContainerdSocket", "", "", ""},
		{"docker socket over TCP", Inputs{DockerSocket: "tcp://1.2.3.4:2375"}, "DockerSocket", "", "", ""},
		{"another namespace", Inputs{ContainerdNamespace: "default"}, "ContainerdNamespace", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := Parse(tt.in); s != nil || (err == nil) != (tt.wantInput == "") {
				t.Fatalf("no host: settings %+v, err %v", s, err)
			} else if err != nil {
				wantInput(t, err, tt.wantInput, "")
			}
			in := tt.in
			in.Hosts, in.Key, in.InsecureIgnoreHostKey = "a.example", key, "true"
			s, err := Parse(in)
			if tt.wantInput != "" {
				wantInput(t, err, tt.wantInput, "")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.runtime != tt.runtime || s.dockerSocket != tt.docker || s.containerdSocket != tt.ctrdSock {
				t.Errorf("runtime %q, sockets %q %q; want %q, %q %q", s.runtime, s.dockerSocket, s.containerdSocket, tt.runtime, tt.docker, tt.ctrdSock)
			}
		})
	}
}
