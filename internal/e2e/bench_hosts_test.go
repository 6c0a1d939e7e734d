package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"
)

// The hosts of the benchmarks, and the OpenSSH client whose commands
// (`ssh h docker pull`, `ssh h ctr images pull`, ...) ghcr-pull is
// compared with.

// startFleet starts n hosts of spec, named prefix0, prefix1, ...; each
// authorizes the first one's client key, so one ssh-key opens them all.
func startFleet(tb testing.TB, prefix string, n int, spec HostSpec) []*RemoteHost {
	tb.Helper()
	hosts := make([]*RemoteHost, n)
	for i := range hosts {
		hosts[i] = StartRemoteHost(tb, fmt.Sprintf("%s%d", prefix, i), spec)
		if i > 0 {
			hosts[i].AuthorizeKey(tb, hosts[0].ClientSigner().PublicKey())
		}
	}
	return hosts
}

// benchLinks are the networks the relay benchmark runs over: this
// machine's loopback and veths, and a modelled wide-area network where
// every link between two machines (the runner, the registry, a host)
// has a 10 ms round trip (wanLink), as between a GitHub-hosted
// runner, a registry and a deploy host in networks of their own. On
// loopback a round trip is free and the routes compare by the work they
// make the machine's 2 cores do; over the wide-area link they also
// compare by the round trips they make.
//
// The third network is the same but for the runner and the registry,
// 2 ms apart: a GitHub-hosted runner and a registry in the same cloud
// (ghcr.io, a cloud's own registry), the hosts elsewhere. There the
// relay's second hop costs what it costs a user whose runner is hosted;
// over the second network, the same delay on every link is the relay's
// worst case.
var benchLinks = []benchLink{
	{name: "loopback"},
	{name: "rtt=10ms", rtt: 10 * time.Millisecond},
	{name: "rtt=10ms,runner-registry=2ms", rtt: 10 * time.Millisecond, runnerRegistryRTT: 2 * time.Millisecond},
}

type benchLink struct {
	name        string
	rtt         time.Duration
	bytesPerSec float64 // 0: the machine's speed
	// runnerRegistryRTT, when set, is the round trip between the runner
	// and the registry; the other links' is rtt.
	runnerRegistryRTT time.Duration
}

// benchNet is how the benchmark's machines reach each other over one
// link: the registry's address, the same for the runner and every host,
// and each host's sshd as the runner dials it.
type benchNet struct {
	registry string
	sshd     map[*RemoteHost]string // host:port
}

// newBenchNet puts link between the runner, the registry (e's) and hosts.
func newBenchNet(b *testing.B, e *Env, link benchLink, hosts []*RemoteHost) benchNet {
	n := benchNet{sshd: map[*RemoteHost]string{}}
	if link.rtt == 0 {
		n.registry = hosts[0].ExposeOnHost(b, e.Host)
		for _, h := range hosts {
			n.sshd[h] = h.Addr()
		}
		return n
	}
	far, near := newWANLink(link.rtt, 0), newWANLink(link.rtt, 0)
	if link.runnerRegistryRTT > 0 {
		near = newWANLink(link.runnerRegistryRTT, 0)
	}
	// The runner and the hosts reach the registry at one address (an
	// image reference names it for both); the runner's connections come
	// from that address's own IP (it is this machine's), a host's from
	// its network namespace.
	n.registry = hosts[0].listenProxyBy(b, e.Host, func(client net.Addr) *wanLink {
		if ip, _, _ := net.SplitHostPort(client.String()); ip == hosts[0].hostIP {
			return near
		}
		return far
	})
	if err := AllowPlainHTTP(n.registry); err != nil {
		b.Fatal(err)
	}
	for _, h := range hosts {
		n.sshd[h] = h.listenProxy(b, h.Addr(), newWANLink(link.rtt, 0))
	}
	return n
}

// inputs are the action's ssh-host and ssh-known-hosts for hs over n.
func (n benchNet) inputs(hs []*RemoteHost) map[string]string {
	var names, known []string
	for _, h := range hs {
		names = append(names, h.User()+"@"+n.sshd[h])
		for _, k := range h.HostKeys() {
			known = append(known, knownhosts.Line([]string{n.sshd[h]}, k))
		}
	}
	return map[string]string{"ssh-host": strings.Join(names, ","), "ssh-known-hosts": strings.Join(known, "\n")}
}

// openSSH is the ssh command set up for hosts: the first host's client key
// and every host's keys in known_hosts, in files of a temporary directory;
// with net set, hosts are dialled at its addresses.
type openSSH struct {
	keyFile, knownHostsFile string
	net                     *benchNet
}

// over is c dialling hosts across n.
func (c openSSH) over(b *testing.B, n benchNet, hosts ...*RemoteHost) openSSH {
	known := n.inputs(hosts)["ssh-known-hosts"] + "\n"
	c.knownHostsFile = filepath.Join(b.TempDir(), "known_hosts")
	if err := os.WriteFile(c.knownHostsFile, []byte(known), 0o600); err != nil {
		b.Fatal(err)
	}
	c.net = &n
	return c
}

func newOpenSSH(b *testing.B, hosts ...*RemoteHost) openSSH {
	if _, err := exec.LookPath("ssh"); err != nil {
		skipOrFatal(b, "ssh not installed: %v", err)
	}
	dir := b.TempDir()
	c := openSSH{keyFile: filepath.Join(dir, "id"), knownHostsFile: filepath.Join(dir, "known_hosts")}
	var known strings.Builder
	for _, h := range hosts {
		known.WriteString(h.KnownHosts())
	}
	if err := os.WriteFile(c.keyFile, []byte(hosts[0].ClientKeyPEM()), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(c.knownHostsFile, []byte(known.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	return c
}

// command runs args on h, as `ssh user@ip args...`.
func (c openSSH) command(h *RemoteHost, args ...string) *exec.Cmd {
	ip, port := h.IP(), "22"
	if c.net != nil {
		ip, port, _ = net.SplitHostPort(c.net.sshd[h])
	}
	return exec.Command("ssh", append([]string{"-i", c.keyFile, "-o", "UserKnownHostsFile=" + c.knownHostsFile,
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", port, h.User() + "@" + ip}, args...)...)
}

// run runs args on h and fails b with the output if it fails.
func (c openSSH) run(b *testing.B, h *RemoteHost, args ...string) {
	if out, err := c.command(h, args...).CombinedOutput(); err != nil {
		b.Fatalf("ssh %s on %s: %v\n%s", strings.Join(args, " "), h.Name, err, out)
	}
}

// onAll runs args on every host at once and waits for them all.
func (c openSSH) onAll(b *testing.B, hs []*RemoteHost, args ...string) {
	cmds := make([]*exec.Cmd, len(hs))
	outs := make([]strings.Builder, len(hs))
	for i, h := range hs {
		cmds[i] = c.command(h, args...)
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			b.Fatal(err)
		}
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			b.Fatalf("ssh %s on %s: %v\n%s", strings.Join(args, " "), hs[i].Name, err, outs[i].String())
		}
	}
}

// benchSizes are the image sizes of the pull benchmarks, 3 layers each:
// small is latency-bound; large is where fetching, decompressing and
// unpacking dominate (and several daemons contend for the machine's cores).
var benchSizes = []struct {
	name string
	size int64
}{{"small", 256 << 10}, {"large", 8 << 20}}

// pushBenchImages pushes <repo>-small:1 and <repo>-large:1, public, their
// configs naming this machine's platform (pushNodeImage).
func pushBenchImages(b *testing.B, e *Env, repo string) {
	for _, sz := range benchSizes {
		pushNodeImage(b, e, repo+"-"+sz.name, "1", sz.size, 3)
		e.Front.SetPublic(repo + "-" + sz.name)
	}
}

// benchPull runs env's action pulling ref onto hs anonymously, with the
// first host's key (which the others authorize), and fails b unless it
// succeeds. in adds inputs (ssh-transfer, insecure-registry).
func benchPull(b *testing.B, env *Env, ref string, in map[string]string, hs ...*RemoteHost) Result {
	var names, known []string
	for _, h := range hs {
		names = append(names, h.SSHHost())
		known = append(known, h.KnownHosts())
	}
	inputs := map[string]string{
		"image": ref, "auth": "anonymous", "summary": "false",
		"ssh-host": strings.Join(names, ","), "ssh-key": hs[0].ClientKeyPEM(), "ssh-known-hosts": strings.Join(known, "\n"),
	}
	for k, v := range in {
		inputs[k] = v
	}
	res := env.RunAction(b, inputs)
	if res.ExitCode != 0 {
		b.Fatalf("ghcr-pull (%v) exit %d\n%s", in, res.ExitCode, res.Stdout)
	}
	return res
}
