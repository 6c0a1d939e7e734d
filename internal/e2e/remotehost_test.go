package e2e

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// These tests prove the remote host infrastructure with sshdeploy's one
// public path, the action's: Parse the inputs, Open a host, pull. Real sshd
// (OpenSSH), real dockerd, in a namespace of the test's own. How a
// connection picks its route is sshdeploy's own tests' business; here the
// host's record of the commands it ran tells the routes apart (stream-local
// runs none).

// remoteInputs reach h's dockerd with its client key and known hosts.
func remoteInputs(h *RemoteHost) sshdeploy.Inputs {
	return sshdeploy.Inputs{Hosts: h.SSHHost(), Key: h.ClientKeyPEM(), KnownHosts: h.KnownHosts(), Timeout: "10s",
		Runtime: "docker", DockerSocket: h.DockerSocket()}
}

// openRemote parses in and opens its first host, as the action does; the
// runtime is closed when the test ends.
func openRemote(t *testing.T, in sshdeploy.Inputs) (sshdeploy.Runtime, time.Duration, error) {
	t.Helper()
	s, err := sshdeploy.Parse(in)
	if err != nil {
		return nil, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	rt, err := sshdeploy.Open(ctx, s.Hosts[0], s)
	if err != nil {
		return nil, 0, err
	}
	t.Cleanup(func() { rt.Close() })
	return rt, time.Since(start), nil
}

// mustOpen is openRemote that fails the test on an error.
func mustOpen(t *testing.T, in sshdeploy.Inputs) (sshdeploy.Runtime, time.Duration) {
	t.Helper()
	rt, d, err := openRemote(t, in)
	if err != nil {
		t.Fatalf("open %s: %v", in.Hosts, err)
	}
	return rt, d
}

func runKeyscan(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ssh-keyscan", append([]string{"-T", "5"}, args...)...).Output()
	if err != nil || len(out) == 0 {
		t.Fatalf("ssh-keyscan %v: %v", args, err)
	}
	return string(out)
}

func TestRemoteHost(t *testing.T) {
	// The machine's dockerd, as on a runner: its /var/run/docker.sock is
	// what the host's sshd must hide behind the remote's own (the default
	// socket path subtest), and run alone this test would otherwise have
	// none.
	Start(t)
	h := StartRemoteHost(t, "infra", HostSpec{HostKeyTypes: []string{"ed25519", "ecdsa", "rsa"}})

	t.Run("ssh-keyscan output verifies the host", func(t *testing.T) {
		for _, args := range [][]string{{"-p", "22", h.IP()}, {"-H", "-p", "22", h.IP()}} {
			in := remoteInputs(h)
			in.KnownHosts = runKeyscan(t, args...)
			_, d := mustOpen(t, in)
			t.Logf("ssh-keyscan %v: verified and opened in %s", args, d)
		}
	})

	t.Run("stream-local", func(t *testing.T) {
		rt, d := mustOpen(t, remoteInputs(h))
		if name, _ := rt.(interface{ Runtime() (string, string) }).Runtime(); name != "docker" {
			t.Fatalf("runtime %q", name)
		}
		if _, err := rt.Inspect(context.Background(), "e2e/absent:v1"); err == nil {
			t.Fatal("inspected an image the host does not have")
		}
		// dial-stdio would have run a command for each connection.
		if cmds := h.Commands(); len(cmds) != 0 {
			t.Fatalf("stream-local ran commands on the host: %q", cmds)
		}
		t.Logf("timing: connect+handshake+auth+route+ping (stream-local) %s", d)
	})

	t.Run("remote dockerd pulls from a registry exposed on HostAddr, by the default socket path", func(t *testing.T) {
		reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		defer reg.Close()
		regAddr := strings.TrimPrefix(reg.URL, "http://")
		img, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(regAddr + "/e2e/remotehost:v1")
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		exposed := h.ExposeOnHost(t, regAddr)
		if !strings.HasPrefix(exposed, h.HostAddr()+":") {
			t.Fatalf("exposed on %s", exposed)
		}
		// /var/run/docker.sock over SSH is the remote's dockerd, not the
		// runner's: the image lands there and only there.
		in := remoteInputs(h)
		in.DockerSocket = ""
		rt, _ := mustOpen(t, in)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		remoteRef := exposed + "/e2e/remotehost:v1"
		// Credentials travel only in the pull call's X-Registry-Auth (this
		// registry ignores them); afterwards the host holds no copy.
		const secret = "e2e-registry-secret-51c3"
		creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "e2e", Password: secret}
		auth, err := docker.RegistryAuth(creds)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := rt.Pull(ctx, remoteRef, nil, creds, nil); err != nil {
			t.Fatalf("pull: %v", err)
		}
		t.Logf("pulled %s on the remote over SSH in %s", remoteRef, time.Since(start))
		if _, err := h.Docker().ImageInspect(ctx, remoteRef); err != nil {
			t.Fatalf("not in the remote daemon: %v", err)
		}
		if found := h.FindInFiles(secret, auth, base64.StdEncoding.EncodeToString([]byte(secret))); len(found) != 0 {
			t.Fatalf("the secret is on the host: %v", found)
		}
		// The scan does find what is there.
		if err := os.WriteFile(filepath.Join(h.Dir, "canary"), []byte("x"+secret+"x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if found := h.FindInFiles(secret); len(found) != 1 {
			t.Fatalf("canary: found %v", found)
		}
		os.Remove(filepath.Join(h.Dir, "canary"))
		local, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
		if err != nil {
			t.Fatal(err)
		}
		defer local.Close()
		if _, err := local.ImageInspect(ctx, remoteRef); err == nil {
			t.Fatal("the image is in the runner's daemon too")
		}
	})

	t.Run("fingerprint", func(t *testing.T) {
		in := remoteInputs(h)
		in.KnownHosts, in.Fingerprints = "", h.Fingerprint()
		mustOpen(t, in)
	})

	t.Run("wrong host key is refused before authentication", func(t *testing.T) {
		other, _ := ssh.NewSignerFromKey(newEd25519Key(t))
		in := remoteInputs(h)
		in.KnownHosts = knownhosts.Line([]string{h.IP()}, other.PublicKey())
		acceptedBefore := strings.Count(h.SSHDLog(), "Accepted publickey")
		commandsBefore := len(h.Commands())
		_, _, err := openRemote(t, in)
		if err == nil || !strings.Contains(err.Error(), "host key verification failed for "+h.Addr()) {
			t.Fatalf("err = %v, want the host key refused", err)
		}
		t.Logf("refused: %v", err)
		time.Sleep(200 * time.Millisecond) // let sshd log the disconnect
		log := h.SSHDLog()
		if strings.Count(log, "Accepted publickey") != acceptedBefore || len(h.Commands()) != commandsBefore {
			t.Fatal("the host authenticated the client despite the wrong host key")
		}
		if !strings.Contains(log, "[preauth]") {
			t.Errorf("sshd did not log a pre-authentication disconnect:\n%s", lastLinesOf(log, 5))
		}
	})

	t.Run("missing known hosts names ssh-keyscan", func(t *testing.T) {
		in := remoteInputs(h)
		in.KnownHosts = ""
		_, err := sshdeploy.Parse(in)
		var ie *failure.BadInput
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), "ssh-keyscan -p 22 "+h.IP()) {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("encrypted key", func(t *testing.T) {
		const passphrase = "e2e passphrase 7"
		in := remoteInputs(h)
		in.Key, in.KeyPassphrase, in.KnownHosts = h.EncryptedClientKeyPEM(passphrase), "wrong", h.HashedKnownHosts()
		if _, err := sshdeploy.Parse(in); err == nil {
			t.Fatal("wrong passphrase accepted")
		}
		in.KeyPassphrase = passphrase
		mustOpen(t, in)
	})

	t.Run("AllowStreamLocalForwarding no: dial-stdio", func(t *testing.T) {
		h.RestartSSHD(t, SSHDPolicy{NoStreamLocal: true})
		rt, d := mustOpen(t, remoteInputs(h))
		start := time.Now()
		if _, err := rt.Inspect(context.Background(), "e2e/absent:v1"); err == nil {
			t.Fatal("inspected an image the host does not have")
		}
		want := "docker -H 'unix://" + h.DockerSocket() + "' system dial-stdio"
		cmds := h.Commands()
		if len(cmds) == 0 {
			t.Fatal("no command recorded")
		}
		for _, c := range cmds {
			if c != want {
				t.Fatalf("ran %q; the only command should be %q", c, want)
			}
		}
		t.Logf("timing: open (stream-local refused, dial-stdio probed, ping) %s, an inspect %s; %d dial-stdio commands", d, time.Since(start), len(cmds))

		// Closing the runtime leaves no dial-stdio behind on the host.
		rt.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var left []string
			for _, p := range h.Processes() {
				if strings.Contains(p, "dial-stdio") {
					left = append(left, p)
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("left running on the host: %q", left)
			}
			time.Sleep(100 * time.Millisecond)
		}
		h.RestartSSHD(t, SSHDPolicy{})
	})

	t.Run("nothing of the client key on the host", func(t *testing.T) {
		// The host holds the public key only; the private key never
		// travels.
		pemText := h.ClientKeyPEM()
		body := strings.Split(strings.TrimSpace(pemText), "\n")[2]
		if found := h.FindInFiles(body); len(found) != 0 {
			t.Fatalf("private key material on the host: %v", found)
		}
	})
}

func newEd25519Key(t *testing.T) any {
	t.Helper()
	k, err := generateSSHKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRemoteHostBehindJumpHost(t *testing.T) {
	jump := StartRemoteHost(t, "jump", HostSpec{Kind: NoRuntime})
	target := StartRemoteHost(t, "behind", HostSpec{Net: Behind(jump)})
	jump.AuthorizeKey(t, target.ClientSigner().PublicKey())

	bastion := jump.User() + "@" + jump.Addr()
	in := remoteInputs(target)
	in.ProxyJump, in.KnownHosts = bastion, jump.KnownHosts()+target.KnownHosts()
	_, d := mustOpen(t, in)
	t.Logf("timing through the bastion: connect, route and ping %s", d)

	if !strings.Contains(jump.SSHDLog(), "Accepted publickey") {
		t.Fatal("the bastion authenticated no one")
	}
	// The target saw the connection come from the bastion's side of their
	// private link, the only way to it.
	bastionSide := strings.TrimSuffix(target.IP(), ".6") + ".5"
	if !strings.Contains(target.SSHDLog(), "Connection from "+bastionSide) {
		t.Fatalf("the target's sshd did not see %s:\n%s", bastionSide, lastLinesOf(target.SSHDLog(), 10))
	}

	// A wrong key for the target is refused through the bastion too.
	other, _ := ssh.NewSignerFromKey(newEd25519Key(t))
	in.KnownHosts = jump.KnownHosts() + knownhosts.Line([]string{target.IP()}, other.PublicKey())
	_, _, err := openRemote(t, in)
	if err == nil || !strings.Contains(err.Error(), "host key verification failed for "+target.Addr()) || !strings.Contains(err.Error(), "(through "+bastion+")") {
		t.Fatalf("err = %v, want the target's key refused through the bastion", err)
	}
}

func TestRemoteHostNoRoute(t *testing.T) {
	// No stream-local forwarding and no docker on the session PATH: the
	// error names both routes and the sshd setting.
	h := StartRemoteHost(t, "noroute", HostSpec{Kind: NoRuntime, SSHD: SSHDPolicy{NoStreamLocal: true}, SessionPath: "/nonexistent"})
	in := remoteInputs(h)
	in.DockerSocket = "/var/run/docker.sock"
	_, _, err := openRemote(t, in)
	if err == nil {
		t.Fatal("a runtime was opened")
	}
	for _, want := range []string{"by either route", "AllowStreamLocalForwarding", "open failed", "exit status 127", "not found", "command not found on the remote PATH"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	t.Logf("%v", err)
}

func TestRemoteHostTwoHostsAndOneDown(t *testing.T) {
	a := StartRemoteHost(t, "two-a", HostSpec{})
	b := StartRemoteHost(t, "two-b", HostSpec{})

	// One registry, exposed on a's HostAddr, serves both hosts.
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	regAddr := strings.TrimPrefix(reg.URL, "http://")
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(regAddr + "/e2e/two:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	exposed := a.ExposeOnHost(t, regAddr) + "/e2e/two:v1"

	start := time.Now()
	var wg sync.WaitGroup
	for _, h := range []*RemoteHost{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rt, _, err := openRemote(t, remoteInputs(h))
			if err != nil {
				t.Errorf("%s: %v", h.Name, err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := rt.Pull(ctx, exposed, nil, registryauth.Anonymous, nil); err != nil {
				t.Errorf("%s: pull: %v", h.Name, err)
			}
		}()
	}
	wg.Wait()
	t.Logf("two hosts pulled %s in parallel in %s", exposed, time.Since(start))
	for _, h := range []*RemoteHost{a, b} {
		if _, err := h.Docker().ImageInspect(context.Background(), exposed); err != nil {
			t.Errorf("%s lacks the image: %v", h.Name, err)
		}
	}

	// A host that is down: refused at once, named in the error.
	b.StopSSHD()
	start = time.Now()
	in := remoteInputs(b)
	in.Timeout = "5s"
	_, _, err = openRemote(t, in)
	var oe *net.OpError
	if err == nil || !strings.Contains(err.Error(), "connect failed") || !errors.As(err, &oe) || !strings.Contains(err.Error(), b.IP()) {
		t.Fatalf("err = %v, want a connect failure naming %s", err, b.IP())
	}
	t.Logf("down host: %v (after %s)", err, time.Since(start))
}
