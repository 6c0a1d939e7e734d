package sshdeploy

import (
	"errors"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// inputNamed reports whether every error joined in err is an *failure.BadInput
// naming an input.
func inputNamed(err error) bool {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			if !inputNamed(e) {
				return false
			}
		}
		return true
	}
	var ie *failure.BadInput
	return errors.As(err, &ie) && ie.Input != ""
}

func FuzzParseHosts(f *testing.F) {
	for _, s := range []string{"deploy@10.0.0.5:2222", "a,b\nc", "[::1]:22", "ssh://u@h", "@:", "[", "h:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hosts, err := parseHosts(s, "root", 22)
		if err != nil {
			if !inputNamed(err) {
				t.Fatalf("error %v names no input", err)
			}
			return
		}
		for _, h := range hosts {
			if h.Name == "" || h.User == "" || h.Port < 1 || h.Port > 65535 {
				t.Fatalf("%q gave an unusable host %+v", s, h)
			}
		}
		if _, err := parseProxyJump(s, "root", 22); err != nil && !inputNamed(err) {
			t.Fatalf("proxy jump error %v names no input", err)
		}
	})
}

func FuzzParseHostKeyPolicy(f *testing.F) {
	f.Add("10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl", "", false)
	f.Add("|1|abc=|def= ssh-rsa AAAA", "SHA256:"+"A", true)
	f.Add("# comment\n[h]:2222 ecdsa-sha2-nistp256 AAAA", "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", false)
	f.Fuzz(func(t *testing.T, known, fingerprints string, insecure bool) {
		_, err := parseHostKeyPolicy(known, fingerprints, insecure)
		if err != nil && !inputNamed(err) {
			t.Fatalf("error %v names no input", err)
		}
	})
}

func FuzzParseScalars(f *testing.F) {
	f.Add("30s", "/var/run/docker.sock", "22")
	f.Add("-1", "relative", "0")
	f.Fuzz(func(t *testing.T, timeout, socket, port string) {
		if d, err := parseTimeout(timeout); err != nil && !inputNamed(err) {
			t.Fatalf("timeout error %v", err)
		} else if err == nil && d <= 0 {
			t.Fatalf("%q accepted as %v", timeout, d)
		}
		if _, err := parseSocket(settingDockerSocket, socket, defaultDockerSocket, "/var/run/docker.sock"); err != nil && !inputNamed(err) {
			t.Fatalf("socket error %v", err)
		}
		if p, err := parsePort(port); err == nil && (p < 1 || p > 65535) {
			t.Fatalf("port %q accepted as %d", port, p)
		}
	})
}

// No passphrase: with one, an encrypted OpenSSH key runs bcrypt for as
// many rounds as the key says, and a fuzzed key can say billions. That is
// the user's own key, not hostile input, so only the parsing is fuzzed.
func FuzzParsePrivateKey(f *testing.F) {
	f.Add("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
	f.Add("not a key")
	f.Fuzz(func(t *testing.T, key string) {
		_, err := parsePrivateKey(key, "")
		if err != nil && !inputNamed(err) {
			t.Fatalf("error %v names no input", err)
		}
	})
}
