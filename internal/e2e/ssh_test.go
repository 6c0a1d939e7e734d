package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// sshRun holds what every SSH scenario shares.
type sshRun struct {
	e       *Env
	regAddr string // the registry as the remote hosts reach it
}

func (s sshRun) inputs(repo string, hosts ...*RemoteHost) map[string]string {
	var names, known []string
	for _, h := range hosts {
		names = append(names, h.SSHHost())
		known = append(known, h.KnownHosts())
	}
	return map[string]string{
		"image":             s.regAddr + "/" + repo + ":1",
		"username":          "deployer",
		"password":          canary,
		"ssh-host":          strings.Join(names, "\n"),
		"ssh-key":           hosts[0].ClientKeyPEM(),
		"ssh-known-hosts":   strings.Join(known, "\n"),
		"insecure-registry": s.regAddr,
		"ssh-timeout":       "10s",
	}
}

func remoteHas(t *testing.T, h *RemoteHost, ref string) []string {
	t.Helper()
	res, err := h.Docker().ImageInspect(context.Background(), ref)
	if err != nil {
		return nil
	}
	return res.RepoDigests
}

func results(t *testing.T, res Result) []map[string]any {
	t.Helper()
	var rs []map[string]any
	if err := json.Unmarshal([]byte(res.Outputs["results"]), &rs); err != nil {
		t.Fatalf("results %q: %v", res.Outputs["results"], err)
	}
	return rs
}

// secretForms are the ways a secret could be stored: plain, and inside the
// base64 X-Registry-Auth or a config.json "auth" field.
func secretForms(user, secret string) []string {
	return []string{secret,
		base64.StdEncoding.EncodeToString([]byte(user + ":" + secret)),
		base64.URLEncoding.EncodeToString([]byte(`{"username":"` + user + `","password":"` + secret + `"}`))}
}

func TestSSH(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/ssh-private")
	a := StartRemoteHost(t, "sa", HostSpec{})
	s := sshRun{e: e, regAddr: a.ExposeOnHost(t, e.Host)}
	privDigest := e.PushRandomImage(t, "acme/ssh-private", "1")
	pubDigest := e.PushRandomImage(t, "acme/ssh-public", "1")
	e.Front.SetPublic("acme/ssh-public")

	t.Run("pull on the remote, not the runner", func(t *testing.T) {
		ref := s.regAddr + "/acme/ssh-private:1"
		res := e.RunAction(t, s.inputs("acme/ssh-private", a))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s\n%s\n%s", res.ExitCode, res.Stdout, res.Stderr, lastLinesOf(a.DockerdLog(), 8))
		}
		if !contains(remoteHas(t, a, ref), s.regAddr+"/acme/ssh-private@"+privDigest) {
			t.Errorf("image not in the remote daemon with the pushed digest")
		}
		if len(e.LocalImageDigests(t, ref)) != 0 {
			t.Errorf("image landed in the runner's daemon too")
		}
		rs := results(t, res)
		if len(rs) != 1 || rs[0]["host"] != a.Addr() || rs[0]["auth_mode"] != "token" || rs[0]["pulled"] != true {
			t.Errorf("results = %v", rs)
		}
		assertNoSecretLeak(t, res, canary)
		// Again: the host has the digest, nothing is transferred.
		res = e.RunAction(t, s.inputs("acme/ssh-private", a))
		if rs := results(t, res); rs[0]["pulled"] != false {
			t.Errorf("second pull reported pulled=%v", rs[0]["pulled"])
		}
	})

	t.Run("rejected credentials on a public repository fall back on the remote", func(t *testing.T) {
		in := s.inputs("acme/ssh-public", a)
		in["password"] = "wrong-" + canary
		res := e.RunAction(t, in)
		if res.ExitCode != 0 || res.Outputs["auth-mode"] != "anonymous" || res.Outputs["fallback-used"] != "true" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		rs := results(t, res)
		if rs[0]["host"] != a.Addr() || rs[0]["fallback_used"] != true || rs[0]["digest"] != pubDigest {
			t.Errorf("per-host result = %v", rs[0])
		}
		assertNoSecretLeak(t, res, "wrong-"+canary)
	})

	t.Run("the remote holds no copy of the secret", func(t *testing.T) {
		needles := append(secretForms("deployer", canary), secretForms("deployer", "wrong-"+canary)...)
		if found := a.FindInFiles(needles...); len(found) > 0 {
			t.Errorf("secret found on the remote: %v", found)
		}
		for _, c := range a.Commands() {
			if strings.Contains(c, canary) {
				t.Errorf("secret on a remote command line: %q", c)
			}
		}
	})

	t.Run("a wrong host key is refused before any credential is sent", func(t *testing.T) {
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		signer, _ := ssh.NewSignerFromKey(other)
		in := s.inputs("acme/ssh-private", a)
		in["ssh-known-hosts"] = fmt.Sprintf("%s %s", knownHostsName(a), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))))
		// The registry is probed while hosts are dialled (issue 13): the
		// guarantee is that nothing reaches a host whose key did not
		// verify. The handshake ends before user authentication, so the
		// host never accepts us, runs nothing and holds nothing.
		acceptedBefore := strings.Count(a.SSHDLog(), "Accepted publickey")
		commandsBefore := len(a.Commands())
		res := e.RunAction(t, in)
		if res.ExitCode == 0 || !strings.Contains(strings.ToLower(res.Stdout), "host key") {
			t.Fatalf("exit %d, want a host key refusal:\n%s", res.ExitCode, res.Stdout)
		}
		if n := strings.Count(a.SSHDLog(), "Accepted publickey"); n != acceptedBefore || len(a.Commands()) != commandsBefore {
			t.Errorf("the refused host authenticated us (%d -> %d) or ran commands (%d -> %d)", acceptedBefore, n, commandsBefore, len(a.Commands()))
		}
		if found := a.FindInFiles(secretForms("deployer", canary)...); len(found) > 0 {
			t.Errorf("secret found on the refused host: %v", found)
		}
		rs := results(t, res)
		if len(rs) != 1 || rs[0]["pulled"] != nil || rs[0]["digest"] != "" {
			t.Errorf("the refused host's result claims a pull: %v", rs)
		}
	})

	t.Run("missing known hosts is a clear error", func(t *testing.T) {
		in := s.inputs("acme/ssh-private", a)
		delete(in, "ssh-known-hosts")
		res := e.RunAction(t, in)
		if res.ExitCode != 2 || !strings.Contains(res.Stdout, "ssh-keyscan") || !strings.Contains(res.Stdout, "::error") {
			t.Fatalf("exit %d, want 2 with the ssh-keyscan command:\n%s", res.ExitCode, res.Stdout)
		}
	})

	t.Run("an encrypted key with its passphrase", func(t *testing.T) {
		in := s.inputs("acme/ssh-public", a)
		in["ssh-key"] = a.EncryptedClientKeyPEM("correct horse")
		in["ssh-key-passphrase"] = "correct horse"
		res := e.RunAction(t, in)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		assertNoSecretLeak(t, res, "correct horse")
	})

	t.Run("AllowStreamLocalForwarding no: the dial-stdio route", func(t *testing.T) {
		d := StartRemoteHost(t, "sd", HostSpec{SSHD: SSHDPolicy{NoStreamLocal: true}})
		d.AuthorizeKey(t, a.ClientSigner().PublicKey())
		in := s.inputs("acme/ssh-private", d)
		in["ssh-key"] = a.ClientKeyPEM()
		res := e.RunAction(t, in)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		if !contains(remoteHas(t, d, s.regAddr+"/acme/ssh-private:1"), s.regAddr+"/acme/ssh-private@"+privDigest) {
			t.Errorf("image not on the host")
		}
		used := false
		for _, c := range d.Commands() {
			used = used || strings.Contains(c, "system dial-stdio")
		}
		if !used {
			t.Errorf("dial-stdio was not used; commands: %v", d.Commands())
		}
		if found := d.FindInFiles(secretForms("deployer", canary)...); len(found) > 0 {
			t.Errorf("secret found on the host: %v", found)
		}
	})

	t.Run("two hosts, one down: the other pulls, the step names the down one", func(t *testing.T) {
		b := StartRemoteHost(t, "sb", HostSpec{})
		b.AuthorizeKey(t, a.ClientSigner().PublicKey())
		c := StartRemoteHost(t, "sc", HostSpec{})
		c.AuthorizeKey(t, a.ClientSigner().PublicKey())
		c.StopSSHD()
		in := s.inputs("acme/ssh-public", a, b, c)
		in["ssh-key"] = a.ClientKeyPEM()
		res := e.RunAction(t, in)
		if res.ExitCode != 1 {
			t.Fatalf("exit %d, want 1\n%s", res.ExitCode, res.Stdout)
		}
		if !contains(remoteHas(t, b, s.regAddr+"/acme/ssh-public:1"), s.regAddr+"/acme/ssh-public@"+pubDigest) {
			t.Errorf("the host that was up did not get its pull")
		}
		if !strings.Contains(res.Stdout, "::error title=ghcr-pull%3A "+s.regAddrEscaped()+"/acme/ssh-public%3A1 failed on "+escapeProp(c.Addr())) {
			t.Errorf("the error does not name the down host %s:\n%s", c.Addr(), res.Stdout)
		}
		rs := results(t, res)
		if len(rs) != 3 {
			t.Fatalf("%d results, want 3", len(rs))
		}
		for _, r := range rs {
			if (r["host"] == c.Addr()) != (r["error"] != nil) {
				t.Errorf("result %v", r)
			}
		}
	})

	t.Run("through ssh-proxy-jump", func(t *testing.T) {
		j := StartRemoteHost(t, "sj", HostSpec{Kind: NoRuntime})
		j.AuthorizeKey(t, a.ClientSigner().PublicKey())
		behind := StartRemoteHost(t, "sbh", HostSpec{Net: Behind(j)})
		behind.AuthorizeKey(t, a.ClientSigner().PublicKey())
		in := s.inputs("acme/ssh-public", behind, j)
		in["ssh-host"] = behind.SSHHost()
		in["ssh-proxy-jump"] = j.SSHHost()
		in["ssh-key"] = a.ClientKeyPEM()
		res := e.RunAction(t, in)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		if !contains(remoteHas(t, behind, s.regAddr+"/acme/ssh-public:1"), s.regAddr+"/acme/ssh-public@"+pubDigest) {
			t.Errorf("image not on the host behind the bastion")
		}
	})
}

func (s sshRun) regAddrEscaped() string { return escapeProp(s.regAddr) }

// escapeProp escapes as workflow command properties are escaped.
func escapeProp(v string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C").Replace(v)
}

// knownHostsName is how known_hosts names a host on port 22.
func knownHostsName(h *RemoteHost) string { return h.IP() }
