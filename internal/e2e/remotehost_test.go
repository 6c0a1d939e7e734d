package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
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

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// These tests prove the remote host infrastructure with sshdeploy: real
// sshd (OpenSSH), real dockerd, in a namespace of the test's own.

func dialRemote(t *testing.T, h *RemoteHost, policy *sshdeploy.HostKeyPolicy, signer ssh.Signer, jumps ...sshdeploy.Host) (*sshdeploy.Conn, time.Duration) {
	t.Helper()
	start := time.Now()
	conn, err := sshdeploy.Dial(context.Background(), sshdeploy.Host{User: h.User(), Name: h.IP(), Port: h.Port()},
		sshdeploy.Config{Signer: signer, HostKeys: policy, ProxyJump: jumps, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("dial %s: %v", h.SSHHost(), err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, time.Since(start)
}

func hostKeyPolicy(t *testing.T, known, fingerprints string) *sshdeploy.HostKeyPolicy {
	t.Helper()
	p, err := sshdeploy.ParseHostKeyPolicy(known, fingerprints, false)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tunnelClient is a moby client whose every connection is dialled over SSH.
func tunnelClient(t *testing.T, conn *sshdeploy.Conn, socket string) *client.Client {
	t.Helper()
	cli, err := client.New(client.WithHost("http://docker"), client.WithDialContext(conn.DockerDialer(socket)), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// pingOverSSH times a bare DialDocker (the route discovery on the first
// call) and then a ping and a version call through the tunnel.
func pingOverSSH(t *testing.T, conn *sshdeploy.Conn, socket string) (dial time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	c, err := conn.DialDocker(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	dial = time.Since(start)
	c.Close()
	cli := tunnelClient(t, conn, socket)
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		t.Fatalf("ping over %s: %v", conn.Route(), err)
	}
	v, err := cli.ServerVersion(ctx, client.ServerVersionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("remote dockerd %s (API %s) over %s", v.Version, v.APIVersion, conn.Route())
	return dial
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
	h := StartRemoteHost(t, "infra", RemoteHostOptions{HostKeyTypes: []string{"ed25519", "ecdsa", "rsa"}})
	signer := h.ClientSigner()

	t.Run("ssh-keyscan output verifies the host", func(t *testing.T) {
		for _, args := range [][]string{{"-p", "22", h.IP()}, {"-H", "-p", "22", h.IP()}} {
			out := runKeyscan(t, args...)
			conn, d := dialRemote(t, h, hostKeyPolicy(t, out, ""), signer)
			t.Logf("ssh-keyscan %v: verified %s in %s", args, conn.HostKeyFingerprint(), d)
		}
	})

	t.Run("stream-local", func(t *testing.T) {
		conn, connect := dialRemote(t, h, hostKeyPolicy(t, h.KnownHosts(), ""), signer)
		dial := pingOverSSH(t, conn, h.DockerSocket())
		if conn.Route() != sshdeploy.RouteStreamLocal {
			t.Fatalf("route %q", conn.Route())
		}
		if cmds := h.Commands(); len(cmds) != 0 {
			t.Fatalf("stream-local ran commands on the host: %q", cmds)
		}
		start := time.Now()
		c, err := conn.DialDocker(context.Background(), h.DockerSocket())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		t.Logf("timing: connect+handshake+auth %s, first DialDocker (stream-local) %s, later DialDocker %s", connect, dial, time.Since(start))
	})

	t.Run("the default socket path over SSH is the remote dockerd", func(t *testing.T) {
		conn, _ := dialRemote(t, h, hostKeyPolicy(t, h.KnownHosts(), ""), signer)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		info, err := tunnelClient(t, conn, "/var/run/docker.sock").Info(ctx, client.InfoOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(h.Dir, "data"); info.Info.DockerRootDir != want {
			t.Fatalf("/var/run/docker.sock over SSH is the daemon with data-root %s, want the remote's %s", info.Info.DockerRootDir, want)
		}
	})

	t.Run("remote dockerd pulls from a registry exposed on HostAddr", func(t *testing.T) {
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
		conn, _ := dialRemote(t, h, hostKeyPolicy(t, h.KnownHosts(), ""), signer)
		cli := tunnelClient(t, conn, h.DockerSocket())
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		remoteRef := exposed + "/e2e/remotehost:v1"
		// Credentials travel only in the pull call's X-Registry-Auth (this
		// registry ignores them); afterwards the host holds no copy.
		const secret = "e2e-registry-secret-51c3"
		authJSON, _ := json.Marshal(map[string]string{"username": "e2e", "password": secret})
		auth := base64.URLEncoding.EncodeToString(authJSON)
		start := time.Now()
		resp, err := cli.ImagePull(ctx, remoteRef, client.ImagePullOptions{RegistryAuth: auth})
		if err != nil {
			t.Fatal(err)
		}
		if err := resp.Wait(ctx); err != nil {
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
		conn, _ := dialRemote(t, h, hostKeyPolicy(t, "", h.Fingerprint()), signer)
		if got := ssh.FingerprintSHA256(conn.HostKey()); got != h.Fingerprint() {
			t.Fatalf("verified %s", got)
		}
	})

	t.Run("wrong host key is refused before authentication", func(t *testing.T) {
		other, _ := ssh.NewSignerFromKey(newEd25519Key(t))
		known := knownhosts.Line([]string{h.IP()}, other.PublicKey())
		acceptedBefore := strings.Count(h.SSHDLog(), "Accepted publickey")
		commandsBefore := len(h.Commands())
		_, err := sshdeploy.Dial(context.Background(), sshdeploy.Host{User: h.User(), Name: h.IP(), Port: 22},
			sshdeploy.Config{Signer: signer, HostKeys: hostKeyPolicy(t, known, "")})
		var hk *sshdeploy.HostKeyError
		if !errors.As(err, &hk) {
			t.Fatalf("err = %v, want *HostKeyError", err)
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
		_, err := sshdeploy.Dial(context.Background(), sshdeploy.Host{User: h.User(), Name: h.IP(), Port: 22},
			sshdeploy.Config{Signer: signer, HostKeys: hostKeyPolicy(t, "", "")})
		var ie *failure.BadInput
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), "ssh-keyscan -p 22 "+h.IP()) {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("encrypted key", func(t *testing.T) {
		const passphrase = "e2e passphrase 7"
		pemText := h.EncryptedClientKeyPEM(passphrase)
		if _, err := sshdeploy.ParsePrivateKey(pemText, "wrong"); err == nil {
			t.Fatal("wrong passphrase accepted")
		}
		s, err := sshdeploy.ParsePrivateKey(pemText, passphrase)
		if err != nil {
			t.Fatal(err)
		}
		dialRemote(t, h, hostKeyPolicy(t, h.HashedKnownHosts(), ""), s)
		// The plain form is the same key.
		if _, err := sshdeploy.ParsePrivateKey(h.ClientKeyPEM(), ""); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("AllowStreamLocalForwarding no: dial-stdio", func(t *testing.T) {
		h.RestartSSHD(t, false)
		conn, connect := dialRemote(t, h, hostKeyPolicy(t, h.KnownHosts(), ""), signer)
		dial := pingOverSSH(t, conn, h.DockerSocket())
		if conn.Route() != sshdeploy.RouteDialStdio {
			t.Fatalf("route %q", conn.Route())
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
		t.Logf("timing: connect %s, first DialDocker (stream-local refused, dial-stdio probed) %s; %d dial-stdio commands for a bare dial plus a client's ping and version", connect, dial, len(cmds))
		start := time.Now()
		c, err := conn.DialDocker(context.Background(), h.DockerSocket())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("timing: later DialDocker (dial-stdio) %s", time.Since(start))
		c.Close()

		// Closing the client leaves no dial-stdio behind on the host.
		conn.Close()
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
		h.RestartSSHD(t, true)
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
	jump := StartJumpHost(t, "jump")
	target := StartRemoteHost(t, "behind", RemoteHostOptions{Behind: jump})
	signer := target.ClientSigner()
	jump.AuthorizeKey(t, signer.PublicKey())

	bastion := sshdeploy.Host{User: jump.User(), Name: jump.IP(), Port: jump.Port()}
	policy := hostKeyPolicy(t, jump.KnownHosts()+target.KnownHosts(), "")
	conn, connect := dialRemote(t, target, policy, signer, bastion)
	dial := pingOverSSH(t, conn, target.DockerSocket())
	t.Logf("timing through the bastion: connect %s, first DialDocker (%s) %s", connect, conn.Route(), dial)

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
	bad := hostKeyPolicy(t, jump.KnownHosts()+knownhosts.Line([]string{target.IP()}, other.PublicKey()), "")
	_, err := sshdeploy.Dial(context.Background(), sshdeploy.Host{User: "root", Name: target.IP(), Port: 22},
		sshdeploy.Config{Signer: signer, HostKeys: bad, ProxyJump: []sshdeploy.Host{bastion}})
	var hk *sshdeploy.HostKeyError
	var de *sshdeploy.DialError
	if !errors.As(err, &hk) || !errors.As(err, &de) || de.Via == "" {
		t.Fatalf("err = %v, want a HostKeyError through the bastion", err)
	}
}

func TestRemoteHostNoRoute(t *testing.T) {
	// No stream-local forwarding and no docker on the session PATH: the
	// error names both routes and the sshd setting.
	h := StartRemoteHost(t, "noroute", RemoteHostOptions{Kind: NoRuntime, DisallowStreamLocal: true, SessionPath: "/nonexistent"})
	conn, _ := dialRemote(t, h, hostKeyPolicy(t, h.KnownHosts(), ""), h.ClientSigner())
	_, err := conn.DialDocker(context.Background(), "/var/run/docker.sock")
	var re *sshdeploy.RouteError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v, want *RouteError", err)
	}
	for _, want := range []string{"AllowStreamLocalForwarding", "open failed", "exit status 127", "not found", "command not found on the remote PATH"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	t.Logf("%v", err)
}

func TestRemoteHostTwoHostsAndOneDown(t *testing.T) {
	a := StartRemoteHost(t, "two-a", RemoteHostOptions{})
	b := StartRemoteHost(t, "two-b", RemoteHostOptions{})

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
			conn, err := sshdeploy.Dial(context.Background(), sshdeploy.Host{User: h.User(), Name: h.IP(), Port: 22},
				sshdeploy.Config{Signer: h.ClientSigner(), HostKeys: hostKeyPolicy(t, h.KnownHosts(), "")})
			if err != nil {
				t.Errorf("%s: %v", h.Name, err)
				return
			}
			defer conn.Close()
			cli, err := client.New(client.WithHost("http://docker"), client.WithDialContext(conn.DockerDialer(h.DockerSocket())), client.WithAPIVersionNegotiation())
			if err != nil {
				t.Error(err)
				return
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			resp, err := cli.ImagePull(ctx, exposed, client.ImagePullOptions{})
			if err == nil {
				err = resp.Wait(ctx)
			}
			if err != nil {
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
	_, err = sshdeploy.Dial(context.Background(), sshdeploy.Host{User: "root", Name: b.IP(), Port: 22},
		sshdeploy.Config{Signer: b.ClientSigner(), HostKeys: hostKeyPolicy(t, b.KnownHosts(), ""), Timeout: 5 * time.Second})
	var de *sshdeploy.DialError
	var oe *net.OpError
	if !errors.As(err, &de) || de.Stage != sshdeploy.StageConnect || !errors.As(err, &oe) || !strings.Contains(err.Error(), b.IP()) {
		t.Fatalf("err = %v, want a connect DialError naming %s", err, b.IP())
	}
	t.Logf("down host: %v (after %s)", err, time.Since(start))
}
