package e2e

// The "remote host" of the end-to-end tests: a network namespace of the
// test's own making, joined to the machine by a veth pair, with its own
// sshd and its own dockerd inside. It shares the machine's filesystem, so
// the remote dockerd's socket is an ordinary path (DockerSocket) that sshd
// (running as root, like the tests) can open; sshd also runs in a private
// mount namespace where /var/run/docker.sock is bind-mounted to that
// socket, so that SSH sessions and stream-local forwarding see the host's
// own daemon at the default path, as on a real host, and never the
// runner's.
//
// The remote's PATH in SSH sessions is sshd's default (the docker CLI is
// found in /usr/local/bin or /usr/bin), and its shell is root's: on this
// machine root's ~/.bashrc runs `pyenv init`, which costs every session
// about 0.4 s, as a slow login script would on a real host.
//
// Addresses: each host takes a free slot n (1..250, claimed across
// processes under /run/ghcr-pull-e2e) and the /30 10.231.n.0: 10.231.n.1 on
// the machine's side ("HostAddr"), 10.231.n.2 inside, where sshd listens.
// A host behind a bastion (Net: Behind(b)) also gets a second
// veth pair straight to the bastion's namespace, 10.231.n.5 (bastion side)
// and 10.231.n.6 (its side), and its sshd listens only there: the runner
// can reach it through the bastion and in no other way. No route leads
// anywhere but the machine and these namespaces.
//
// Reaching the runner's registry from a remote host: a registry on
// 127.0.0.1 is out of reach from the namespace (its loopback is its own).
// Every namespace routes by default to the machine, and the machine accepts
// packets for any of its own addresses on any interface, so any remote
// host's HostAddr() is reachable from every remote host's namespace. The
// caller either makes its registry (or the front that serves /v2/ and the
// token endpoint) listen on HostAddr() too, or calls ExposeOnHost, which
// forwards HostAddr():<port> to a loopback address. Either way:
//   - name images by that address (10.231.n.1:port/repo:tag) on the runner
//     as well, so that the probe and the remote pull agree;
//   - the bearer realm in WWW-Authenticate must be reachable from the remote
//     daemon: derive it from the request's Host header (ExposeOnHost keeps
//     it as the remote sent it), not from the loopback address;
//   - the remote dockerd trusts 10.231.0.0/16 over plain HTTP
//     (--insecure-registry), so no TLS is needed.
//
// Requirements: root, ip (iproute2), nsenter, unshare, sshd, dockerd. When the host
// cannot be set up the test is skipped with the reason, or fails when
// CI=true.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostSpec describes a remote host as a value on three axes: where it sits
// on the network, what its sshd lets a client forward, and the runtime it
// runs. A test's host is one such value passed to StartRemoteHost.
type HostSpec struct {
	// Net is where the host sits: Direct (the zero value), Isolated, or
	// Behind(bastion).
	Net Network
	// SSHD is sshd's forwarding policy; the zero value allows both, as
	// OpenSSH does by default.
	SSHD SSHDPolicy
	// Kind is the runtime the host runs beside sshd: WithDockerd (nil
	// means it), WithContainerd (a Kubernetes node without the kubelet),
	// or NoRuntime (a bastion for ssh-proxy-jump).
	Kind HostKind

	// HostKeyTypes are sshd's host key types: "ed25519" (the default),
	// "ecdsa", "rsa".
	HostKeyTypes []string
	// InsecureRegistries are added to the remote dockerd's
	// --insecure-registry list, after 10.231.0.0/16 (every HostAddr).
	InsecureRegistries []string
	// SessionPath replaces PATH in SSH sessions, e.g. "/nonexistent" for a
	// host where `docker` is not found.
	SessionPath string
}

// Network is where a host sits. Every host has its /30 link to the
// machine; the values differ in what lies beyond it.
type Network struct {
	isolated bool
	bastion  *RemoteHost
}

var (
	// Direct: the host routes to the machine, so every HostAddr (and a
	// registry exposed there) is in its reach; the runner reaches its sshd.
	Direct = Network{}
	// Isolated: no route beyond the host's own link, and its dockerd has
	// no --insecure-registry: a registry served on another host's
	// HostAddr is out of its reach (ssh-transfer: relay).
	Isolated = Network{isolated: true}
)

// Behind puts a host behind bastion (a started host, typically NoRuntime):
// its sshd listens only on a link to the bastion's namespace.
func Behind(bastion *RemoteHost) Network { return Network{bastion: bastion} }

// SSHDPolicy is what the host's sshd lets a client forward.
type SSHDPolicy struct {
	// NoStreamLocal: AllowStreamLocalForwarding no, so only the
	// dial-stdio route reaches the daemon.
	NoStreamLocal bool
	// NoTCPForwarding: AllowTcpForwarding no, which refuses remote
	// forwards (the relay's).
	NoTCPForwarding bool
}

func (p SSHDPolicy) config() string {
	yesNo := map[bool]string{true: "no", false: "yes"}
	return fmt.Sprintf("AllowTcpForwarding %s\nAllowStreamLocalForwarding %s\n", yesNo[p.NoTCPForwarding], yesNo[p.NoStreamLocal])
}

// RemoteHost is a running remote host. Its methods may be called from
// several goroutines.
type RemoteHost struct {
	Name      string
	Namespace string
	// Dir holds everything of this host: keys, configs, logs, the
	// dockerd's data-root and exec-root, its socket.
	Dir string

	tb       testing.TB
	slot     int
	spec     HostSpec
	hostIP   string // machine side of the veth pair
	sshIP    string // where sshd listens
	hostKeys []ssh.Signer
	client   ssh.Signer
	clientPK any // the client's private key, for PEM forms

	mu        sync.Mutex
	sshd      *hostProcess
	policy    SSHDPolicy // the current sshd's
	sshdLogAt int64      // log size when the current sshd started
	dockerd   *hostProcess
	closers   []io.Closer
	links     []string // veth names in the machine's namespace
	stopOnce  sync.Once
	docker    *client.Client

	containerd *hostProcess // WithContainerd's, under mu
	podman     *hostProcess // WithPodman's service, under mu
	// sessionEnv is exported in SSH sessions (a Podman host's CONTAINERS_*).
	sessionEnv []string
	// rootless is the login user of a rootless host (set before start),
	// nil for root.
	rootless *rootlessUser
}

const (
	remoteUser  = "root"
	slotRoot    = "/run/ghcr-pull-e2e"
	subnetFmt   = "10.231.%d.%d"
	allSubnets  = "10.231.0.0/16"
	startupWait = 60 * time.Second
)

// StartRemoteHost starts the host spec describes, named name (letters,
// digits and dashes, short: it appears in the namespace name), and
// registers its Stop with tb.Cleanup.
func StartRemoteHost(tb testing.TB, name string, spec HostSpec) *RemoteHost {
	tb.Helper()
	if reason := remoteHostUnsupported(); reason != "" {
		skipOrFatal(tb, "remote host %s: %s", name, reason)
	}
	if name == "" || len(name) > 20 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		tb.Fatalf("remote host name %q: use up to 20 lower-case letters, digits and dashes", name)
	}
	if spec.Kind == nil {
		spec.Kind = WithDockerd
	}
	if reason := spec.Kind.unsupported(); reason != "" {
		skipOrFatal(tb, "remote host %s: %s", name, reason)
	}
	if b := spec.Net.bastion; b != nil && b.Namespace == "" {
		tb.Fatalf("remote host %s: Behind is not a started host", name)
	}
	if len(spec.HostKeyTypes) == 0 {
		spec.HostKeyTypes = []string{"ed25519"}
	}
	h := &RemoteHost{Name: name, tb: tb, spec: spec, policy: spec.SSHD}
	tb.Cleanup(h.Stop)
	if err := h.start(); err != nil {
		h.Stop()
		skipOrFatal(tb, "remote host %s: %v", name, err)
	}
	return h
}

// skipOrFatal: the CI rule. A machine that cannot host the remote skips
// the test, except in CI, where the infrastructure must work.
func skipOrFatal(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf(format, args...)
	}
	tb.Skipf(format, args...)
}

func remoteHostUnsupported() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, veth pairs, a second dockerd)"
	}
	for _, tool := range []string{"ip", "nsenter", "unshare", "sshd", "dockerd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s is not installed (Debian: iproute2, util-linux, openssh-server, docker.io)", tool)
		}
	}
	return ""
}

func (h *RemoteHost) start() error {
	slot, err := claimSlot()
	if err != nil {
		return err
	}
	h.slot = slot
	h.Namespace = fmt.Sprintf("gp-%s-%d", h.Name, slot)
	ownNamespace(h.Namespace)
	h.hostIP = fmt.Sprintf(subnetFmt, slot, 1)
	h.sshIP = fmt.Sprintf(subnetFmt, slot, 2)
	// Unix socket paths must stay under 108 bytes: a short directory.
	dir, err := os.MkdirTemp("/tmp", "gp-"+h.Name+"-")
	if err != nil {
		return err
	}
	h.Dir = dir
	ownPath(dir)
	if err := writeSlotState(slot, h.Namespace, dir); err != nil {
		return err
	}

	if err := h.network(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := h.keys(); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	// The runtime first: sshd's sessions see its socket at the default path.
	if err := h.spec.Kind.start(h); err != nil {
		return fmt.Errorf("%s: %w", h.spec.Kind, err)
	}
	if err := h.startSSHD(); err != nil {
		return fmt.Errorf("sshd: %w", err)
	}
	return nil
}

func runSetup(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (h *RemoteHost) network() error {
	ns := h.Namespace
	hostLink, nsLink := fmt.Sprintf("gp%dh", h.slot), fmt.Sprintf("gp%dr", h.slot)
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", hostLink, "type", "veth", "peer", "name", nsLink},
	}
	for _, s := range steps {
		if err := runSetup(s[0], s[1:]...); err != nil {
			return err
		}
	}
	h.mu.Lock()
	h.links = append(h.links, hostLink)
	h.mu.Unlock()
	steps = [][]string{
		{"ip", "link", "set", nsLink, "netns", ns},
		{"ip", "addr", "add", h.hostIP + "/30", "dev", hostLink},
		{"ip", "link", "set", hostLink, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", h.sshIP + "/30", "dev", nsLink},
		{"ip", "-n", ns, "link", "set", nsLink, "up"},
	}
	if !h.spec.Net.isolated {
		// Every HostAddr is a local address of the machine: this one route
		// reaches them all, and nothing beyond the machine. An isolated
		// host has only its /30: its own HostAddr and nothing else.
		steps = append(steps, []string{"ip", "-n", ns, "route", "add", "default", "via", h.hostIP})
	}
	if b := h.spec.Net.bastion; b != nil {
		bastionLink, targetLink := fmt.Sprintf("gp%dj", h.slot), fmt.Sprintf("gp%dt", h.slot)
		bastionIP, targetIP := fmt.Sprintf(subnetFmt, h.slot, 5), fmt.Sprintf(subnetFmt, h.slot, 6)
		h.sshIP = targetIP
		steps = append(steps,
			[]string{"ip", "-n", ns, "link", "add", targetLink, "type", "veth", "peer", "name", bastionLink},
			[]string{"ip", "-n", ns, "link", "set", bastionLink, "netns", b.Namespace},
			[]string{"ip", "-n", ns, "addr", "add", targetIP + "/30", "dev", targetLink},
			[]string{"ip", "-n", ns, "link", "set", targetLink, "up"},
			[]string{"ip", "-n", b.Namespace, "addr", "add", bastionIP + "/30", "dev", bastionLink},
			[]string{"ip", "-n", b.Namespace, "link", "set", bastionLink, "up"},
		)
	}
	for _, s := range steps {
		if err := runSetup(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func (h *RemoteHost) keys() error {
	for _, typ := range h.spec.HostKeyTypes {
		key, err := generateSSHKey(typ)
		if err != nil {
			return err
		}
		signer, err := ssh.NewSignerFromKey(key)
		if err != nil {
			return err
		}
		block, err := ssh.MarshalPrivateKey(key, "host key of "+h.Name)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(h.Dir, "ssh_host_"+typ+"_key"), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
		h.hostKeys = append(h.hostKeys, signer)
	}
	key, err := generateSSHKey("ed25519")
	if err != nil {
		return err
	}
	h.clientPK = key
	if h.client, err = ssh.NewSignerFromKey(key); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(h.Dir, "authorized_keys"), ssh.MarshalAuthorizedKey(h.client.PublicKey()), 0o600)
}

func generateSSHKey(typ string) (any, error) {
	switch typ {
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "ecdsa":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("unknown key type %q", typ)
}

// nsCommand runs a program in the host's network namespace. nsenter only
// switches the network namespace; `ip netns exec` would also remount /sys,
// after which dockerd fails with "Devices cgroup isn't mounted".
func (h *RemoteHost) nsCommand(logName string, args ...string) (*hostProcess, error) {
	return startProcess(filepath.Join(h.Dir, logName), "nsenter", append([]string{"--net=/var/run/netns/" + h.Namespace}, args...)...)
}

// startProcess is the one way the e2e tests start a long-running server
// (every host's sshd and runtime, the cluster's parts): its output appended
// to logPath, killed with the test process (Pdeathsig) and in its own
// process group, so that a ^C to the test does not reach it before its
// owner stops it; the returned process is reaped in the background.
func startProcess(logPath, bin string, args ...string) (*hostProcess, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	p := &hostProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

type hostProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited and been reaped
}

func (p *hostProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process: SIGTERM, then SIGKILL after grace.
func (p *hostProcess) stop(grace time.Duration) {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.done
}

func (h *RemoteHost) sshdConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ListenAddress %s:22\n", h.sshIP)
	for _, typ := range h.spec.HostKeyTypes {
		fmt.Fprintf(&b, "HostKey %s\n", filepath.Join(h.Dir, "ssh_host_"+typ+"_key"))
	}
	h.mu.Lock()
	b.WriteString(h.policy.config())
	h.mu.Unlock()
	fmt.Fprintf(&b, `PidFile %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel VERBOSE
ForceCommand %s
`, filepath.Join(h.Dir, "sshd.pid"), filepath.Join(h.Dir, "authorized_keys"), filepath.Join(h.Dir, "session.sh"))
	return b.String()
}

// sessionScript records each session's command, then runs it as sshd
// would have: the record is how tests see what was run on the host (and
// that no secret was on a command line).
func (h *RemoteHost) sessionScript() string {
	path := ""
	if h.spec.SessionPath != "" {
		path = "PATH=" + quoteForShell(h.spec.SessionPath) + "; export PATH\n"
	}
	h.mu.Lock()
	for _, kv := range h.sessionEnv {
		path += "export " + quoteForShell(kv) + "\n"
	}
	h.mu.Unlock()
	return "#!/bin/sh\nprintf '%s\\n' \"$SSH_ORIGINAL_COMMAND\" >> " + quoteForShell(filepath.Join(h.Dir, "commands.log")) + "\n" +
		path + "exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n"
}

func quoteForShell(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (h *RemoteHost) startSSHD() error {
	// Debian's sshd refuses to start without its privilege separation
	// directory, which only the packaged service creates.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	mode := os.FileMode(0o700)
	if h.rootless != nil {
		// Run by the login user, who also appends to commands.log.
		mode = 0o755
		if err := os.WriteFile(filepath.Join(h.Dir, "commands.log"), nil, 0o666); err != nil {
			return err
		}
		if err := os.Chmod(filepath.Join(h.Dir, "commands.log"), 0o666); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(h.Dir, "session.sh"), []byte(h.sessionScript()), mode); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(h.Dir, "session.sh"), mode); err != nil {
		return err
	}
	cfg := filepath.Join(h.Dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(h.sshdConfig()), 0o600); err != nil {
		return err
	}
	logPath := filepath.Join(h.Dir, "sshd.log")
	var at int64
	if fi, err := os.Stat(logPath); err == nil {
		at = fi.Size()
	}
	// sshd re-executes itself for each connection: it needs its absolute
	// path.
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		return err
	}
	if sshd, err = filepath.Abs(sshd); err != nil {
		return err
	}
	args := h.spec.Kind.sshdCommand(h, []string{sshd, "-D", "-e", "-f", cfg})
	cmd, err := h.nsCommand("sshd.log", args...)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.sshd, h.sshdLogAt = cmd, at
	h.mu.Unlock()
	// The runner cannot reach a host behind a bastion, so wait on sshd's
	// own word that it listens.
	err = waitUntil(20*time.Second, 20*time.Millisecond, func() (bool, error) {
		if strings.Contains(h.readLog("sshd.log", at), "Server listening on") {
			return true, nil
		}
		if cmd.exited() {
			return false, errors.New("sshd exited")
		}
		return false, nil
	})
	if err == nil {
		return nil
	}
	return fmt.Errorf("sshd did not start listening on %s:22 (%v): %s", h.sshIP, err, h.readLog("sshd.log", at))
}

// machineDockerSocket is the default Docker socket path.
const machineDockerSocket = "/var/run/docker.sock"

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (h *RemoteHost) readLog(name string, from int64) string {
	b, err := os.ReadFile(filepath.Join(h.Dir, name))
	if err != nil || int64(len(b)) < from {
		return ""
	}
	return string(b[from:])
}

func (h *RemoteHost) startDockerd() error {
	if err := os.WriteFile(filepath.Join(h.Dir, "daemon.json"), []byte("{}\n"), 0o600); err != nil {
		return err
	}
	args := []string{"dockerd",
		"--config-file", filepath.Join(h.Dir, "daemon.json"),
		"--data-root", filepath.Join(h.Dir, "data"),
		"--exec-root", filepath.Join(h.Dir, "exec"),
		"--pidfile", filepath.Join(h.Dir, "docker.pid"),
		"-H", "unix://" + h.DockerSocket(),
		// Never touch the machine's networking: the first daemon's
		// docker0 and iptables rules stay as they are.
		"--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
	}
	if !h.spec.Net.isolated {
		args = append(args, "--insecure-registry", allSubnets)
	}
	for _, r := range h.spec.InsecureRegistries {
		args = append(args, "--insecure-registry", r)
	}
	return h.runDockerd("dockerd", h.DockerSocket(), args)
}

// runDockerd runs a dockerd, rootful or rootless, and waits for its API on
// socket.
func (h *RemoteHost) runDockerd(what, socket string, args []string) error {
	cli, err := client.New(client.WithHost("unix://"+socket), client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.docker = cli
	h.mu.Unlock()
	return h.runDaemon(&h.dockerd, what, "dockerd.log", socket, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		return err
	}, args...)
}

// gaveUp is a readiness check's verdict that the daemon will not answer:
// runDaemon stops waiting.
type gaveUp struct{ error }

// runDaemon is the one starter of a host's runtime: it runs args in the
// host's network namespace with output to logName, keeps the process in
// *slot (under mu, for Stop), and waits until ready returns nil. An error
// names what did not answer on socket, the last check's reason and the
// log's last lines.
func (h *RemoteHost) runDaemon(slot **hostProcess, what, logName, socket string, ready func() error, args ...string) error {
	cmd, err := h.nsCommand(logName, args...)
	if err != nil {
		return err
	}
	h.mu.Lock()
	*slot = cmd
	h.mu.Unlock()
	var last error
	err = waitUntil(startupWait, 100*time.Millisecond, func() (bool, error) {
		if cmd.exited() {
			return false, errors.New(what + " exited")
		}
		last = ready()
		var g gaveUp
		if errors.As(last, &g) {
			return false, g.error
		}
		return last == nil, nil
	})
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s did not answer on %s (%v, %v); its log ends: %s", what, socket, err, last, lastLinesOf(h.readLog(logName, 0), 15))
}

// IP is where the host's sshd listens.
func (h *RemoteHost) IP() string { return h.sshIP }

// Port is sshd's port.
func (h *RemoteHost) Port() int { return 22 }

// Addr is sshd's address, host:port.
func (h *RemoteHost) Addr() string { return net.JoinHostPort(h.sshIP, "22") }

// User is the SSH user, with the client key in its authorized keys.
func (h *RemoteHost) User() string {
	if h.rootless != nil {
		return h.rootless.name
	}
	return remoteUser
}

// SSHHost is the ssh-host input for this host: user@ip:port.
func (h *RemoteHost) SSHHost() string { return h.User() + "@" + h.Addr() }

// HostAddr is the machine's address on this host's veth pair, reachable
// from every remote host's namespace (see the file comment).
func (h *RemoteHost) HostAddr() string { return h.hostIP }

// HostKeys are sshd's public host keys.
func (h *RemoteHost) HostKeys() []ssh.PublicKey {
	var keys []ssh.PublicKey
	for _, s := range h.hostKeys {
		keys = append(keys, s.PublicKey())
	}
	return keys
}

// KnownHosts is the ssh-known-hosts value for this host, one line per host
// key, as `ssh-keyscan -p 22 <ip>` prints it.
func (h *RemoteHost) KnownHosts() string {
	var b strings.Builder
	for _, k := range h.HostKeys() {
		b.WriteString(knownhosts.Line([]string{h.sshIP}, k) + "\n")
	}
	return b.String()
}

// HashedKnownHosts is KnownHosts with hashed host names (ssh-keyscan -H).
func (h *RemoteHost) HashedKnownHosts() string {
	var b strings.Builder
	for _, k := range h.HostKeys() {
		b.WriteString(knownhosts.Line([]string{knownhosts.HashHostname(h.sshIP)}, k) + "\n")
	}
	return b.String()
}

// Fingerprint is the SHA256 fingerprint of the first host key (ed25519
// unless HostKeyTypes said otherwise).
func (h *RemoteHost) Fingerprint() string { return ssh.FingerprintSHA256(h.hostKeys[0].PublicKey()) }

// ClientKeyPEM is the client's private key (OpenSSH format, unencrypted),
// the ssh-key input.
func (h *RemoteHost) ClientKeyPEM() string {
	block, err := ssh.MarshalPrivateKey(h.clientPK, "ghcr-pull e2e")
	if err != nil {
		panic(err) // an ed25519 key always marshals
	}
	return string(pem.EncodeToMemory(block))
}

// EncryptedClientKeyPEM is the same key encrypted with passphrase.
func (h *RemoteHost) EncryptedClientKeyPEM(passphrase string) string {
	block, err := ssh.MarshalPrivateKeyWithPassphrase(h.clientPK, "ghcr-pull e2e", []byte(passphrase))
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(block))
}

// ClientSigner is the client key as an ssh.Signer.
func (h *RemoteHost) ClientSigner() ssh.Signer { return h.client }

// AuthorizeKey adds a public key to the authorized keys, for instance
// another host's client key, so that one ssh-key opens several hosts.
func (h *RemoteHost) AuthorizeKey(tb testing.TB, key ssh.PublicKey) {
	tb.Helper()
	f, err := os.OpenFile(filepath.Join(h.Dir, "authorized_keys"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(ssh.MarshalAuthorizedKey(key)); err != nil {
		tb.Fatal(err)
	}
}

// DockerSocket is the remote dockerd's socket as the machine sees it, for
// assertions. In the host's SSH sessions (and for sshd's stream-local
// forwarding) /var/run/docker.sock is this socket too: leave the action's
// remote-docker-socket unset. Passing DockerSocket() works for this one
// host only: the filesystem is shared, so one host's path given for
// several hosts sends all their pulls to this host's daemon.
func (h *RemoteHost) DockerSocket() string { return filepath.Join(h.Dir, "docker.sock") }

// Docker is a client of the remote dockerd, for assertions (images
// present, digests). Nil for a host of another Kind.
func (h *RemoteHost) Docker() *client.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.docker
}

// Commands are the commands SSH sessions ran on the host, in order.
func (h *RemoteHost) Commands() []string {
	s := strings.TrimRight(h.readLog("commands.log", 0), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// SSHDLog is the log of the current sshd (LogLevel VERBOSE): accepted
// keys, channels refused, connections closed before authentication.
func (h *RemoteHost) SSHDLog() string {
	h.mu.Lock()
	at := h.sshdLogAt
	h.mu.Unlock()
	return h.readLog("sshd.log", at)
}

// DockerdLog is the remote dockerd's log.
func (h *RemoteHost) DockerdLog() string { return h.readLog("dockerd.log", 0) }

// RestartSSHD restarts sshd with another forwarding policy.
func (h *RemoteHost) RestartSSHD(tb testing.TB, policy SSHDPolicy) {
	tb.Helper()
	h.StopSSHD()
	h.mu.Lock()
	h.policy = policy
	h.mu.Unlock()
	if err := h.startSSHD(); err != nil {
		tb.Fatalf("remote host %s: restarting sshd: %v", h.Name, err)
	}
}

// StopSSHD stops sshd: the host is "down" for SSH (connections are
// refused) while its dockerd keeps running.
func (h *RemoteHost) StopSSHD() { h.stopProcess(&h.sshd, 5*time.Second) }

// stopProcess takes the process out of *slot (under mu) and stops it.
func (h *RemoteHost) stopProcess(slot **hostProcess, grace time.Duration) {
	h.mu.Lock()
	p := *slot
	*slot = nil
	h.mu.Unlock()
	p.stop(grace)
}

// ExposeOnHost listens on HostAddr():0 and forwards each connection to
// target (typically the registry on 127.0.0.1), returning the address
// remote hosts use. It closes with the host.
func (h *RemoteHost) ExposeOnHost(tb testing.TB, target string) string {
	tb.Helper()
	addr := h.listenProxy(tb, target, nil)
	if err := AllowPlainHTTP(addr); err != nil {
		tb.Fatalf("remote host %s: %v", h.Name, err)
	}
	return addr
}

// listenProxy listens on HostAddr():0 and carries each connection to
// target, across link when it is not nil (proxy); it closes with the host.
func (h *RemoteHost) listenProxy(tb testing.TB, target string, link *wanLink) string {
	tb.Helper()
	return h.listenProxyBy(tb, target, func(net.Addr) *wanLink { return link })
}

// listenProxyBy is listenProxy with the link chosen by the client's
// address (proxyBy).
func (h *RemoteHost) listenProxyBy(tb testing.TB, target string, linkFrom func(client net.Addr) *wanLink) string {
	tb.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(h.hostIP, "0"))
	if err != nil {
		tb.Fatalf("remote host %s: listening on %s: %v", h.Name, h.hostIP, err)
	}
	h.mu.Lock()
	h.closers = append(h.closers, l)
	h.mu.Unlock()
	go proxyBy(l, target, linkFrom)
	return l.Addr().String()
}

// Areas are the parts of the filesystem that belong to the remote host:
// its directory (dockerd's data and exec roots, sshd's files, logs, the
// commands sessions ran), and the SSH user's ~/.docker, where `docker
// login` would leave a config.json. The filesystem is shared with the
// machine: ~/.docker is the runner's too.
func (h *RemoteHost) Areas() []string {
	areas := []string{h.Dir}
	if home, err := os.UserHomeDir(); err == nil {
		areas = append(areas, filepath.Join(home, ".docker"))
	}
	return areas
}

// FindInFiles lists the regular files under Areas whose content contains
// any of needles (a secret, its base64 forms, ...), as "path: needle #i".
// Empty needles are ignored.
func (h *RemoteHost) FindInFiles(needles ...string) []string {
	var found []string
	for _, area := range h.Areas() {
		filepath.WalkDir(area, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			for i, n := range needles {
				if n != "" && bytes.Contains(b, []byte(n)) {
					found = append(found, fmt.Sprintf("%s: needle #%d", path, i))
				}
			}
			return nil
		})
	}
	// Command lines and environments of the host's processes still
	// running.
	for _, p := range h.procFiles("cmdline", "environ") {
		for i, n := range needles {
			if n != "" && strings.Contains(p, n) {
				found = append(found, fmt.Sprintf("process %q: needle #%d", strings.Fields(p)[0], i))
			}
		}
	}
	return found
}

// processes lists the command lines of processes in the host's network
// namespace.
func (h *RemoteHost) processes() []string { return h.procFiles("cmdline") }

// procFiles reads the named /proc/<pid>/ files of the processes in the
// host's network namespace, NULs as spaces, one string per process.
func (h *RemoteHost) procFiles(files ...string) []string {
	var out []string
	for _, pid := range h.pidsInNamespace() {
		var all []byte
		for _, f := range files {
			if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + f); err == nil {
				all = append(append(all, b...), 0)
			}
		}
		if s := strings.TrimSpace(strings.ReplaceAll(string(all), "\x00", " ")); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// pidsInNamespace lists the processes in the host's network namespace.
func (h *RemoteHost) pidsInNamespace() []int {
	nsInode := func(pid string) string {
		l, err := os.Readlink("/proc/" + pid + "/ns/net")
		if err != nil {
			return ""
		}
		return l
	}
	fi, err := os.Stat("/var/run/netns/" + h.Namespace)
	if err != nil {
		return nil
	}
	want := fmt.Sprintf("net:[%d]", fi.Sys().(*syscall.Stat_t).Ino)
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || nsInode(e.Name()) != want {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// Processes lists the command lines of processes running in the host's
// namespace (sshd, dockerd, containerd, sessions).
func (h *RemoteHost) Processes() []string { return h.processes() }

// DropSSHConnections kills the sshd processes that serve connections (not
// the listener), as a host that goes away mid-transfer: the runner sees
// its connection end. It returns how many it killed.
func (h *RemoteHost) DropSSHConnections() int {
	fi, err := os.Stat("/var/run/netns/" + h.Namespace)
	if err != nil {
		return 0
	}
	want := fmt.Sprintf("net:[%d]", fi.Sys().(*syscall.Stat_t).Ino)
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/net"); err != nil || l != want {
			continue
		}
		// OpenSSH names a connection's processes "sshd: <user> [priv]"
		// and "sshd: <user>@notty"; the listener keeps its command line.
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.HasPrefix(string(b), "sshd: ") {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
	}
	return n
}

// Stop kills the host's processes and removes its namespace, links and
// directory. It is registered with tb.Cleanup and safe to call again.
func (h *RemoteHost) Stop() {
	h.stopOnce.Do(func() {
		h.mu.Lock()
		closers, docker := h.closers, h.docker
		h.closers = nil
		h.mu.Unlock()
		for _, c := range closers {
			c.Close()
		}
		if docker != nil {
			docker.Close()
		}
		h.StopSSHD()
		h.stopProcess(&h.dockerd, 15*time.Second)
		h.killUserProcesses()
		h.stopContainerd()
		plainHTTP.Lock()
		delete(plainHTTP.podman, h)
		plainHTTP.Unlock()
		h.stopPodman()
		if h.Dir != "" {
			// dockerd stops its containerd; should it have been killed, the
			// containerd it started is ended here, by its recorded pid.
			killRecorded(filepath.Join(h.Dir, "exec", "containerd", "containerd.pid"), h.Dir)
		}
		for _, l := range h.links {
			exec.Command("ip", "link", "del", l).Run()
		}
		if h.Namespace != "" {
			exec.Command("ip", "netns", "del", h.Namespace).Run()
		}
		if h.Dir != "" {
			if err := os.RemoveAll(h.Dir); err != nil {
				h.tb.Logf("remote host %s: removing %s: %v", h.Name, h.Dir, err)
			}
		}
		if h.slot != 0 {
			os.RemoveAll(filepath.Join(slotRoot, strconv.Itoa(h.slot)))
		}
	})
}

// killRecorded kills the process in pidFile if its command line mentions
// dir: pids are reused, so a bare pid file is not proof enough.
func killRecorded(pidFile, dir string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(dir)) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// claimSlot takes a free slot 1..250 across processes: a directory under
// slotRoot, created atomically, naming the owner's pid. A slot whose owner
// is gone is cleaned (its namespace, links, processes and directory) and
// reused.
func claimSlot() (int, error) {
	if err := os.MkdirAll(slotRoot, 0o700); err != nil {
		return 0, err
	}
	for n := 1; n <= 250; n++ {
		dir := filepath.Join(slotRoot, strconv.Itoa(n))
		err := os.Mkdir(dir, 0o700)
		if errors.Is(err, fs.ErrExist) {
			if !reclaimStale(n, dir) {
				continue
			}
			err = os.Mkdir(dir, 0o700)
		}
		if err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			return 0, err
		}
		if linkExists(fmt.Sprintf("gp%dh", n)) {
			// Left by something else: do not take over its addresses.
			os.RemoveAll(dir)
			continue
		}
		return n, nil
	}
	return 0, errors.New("no free 10.231.n.0/30 slot (250 in use)")
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func writeSlotState(slot int, ns, dir string) error {
	return os.WriteFile(filepath.Join(slotRoot, strconv.Itoa(slot), "state"), []byte(ns+"\n"+dir+"\n"), 0o600)
}

// reclaimStale cleans a slot whose owning process has exited (a test run
// that was killed) and reports whether it is free again.
func reclaimStale(n int, dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "owner"))
	if err != nil {
		// Being created right now, or broken: leave it.
		if fi, serr := os.Stat(dir); serr == nil && time.Since(fi.ModTime()) > time.Minute {
			return cleanSlot(n, dir)
		}
		return false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid > 0 && syscall.Kill(pid, 0) == nil {
		return false
	}
	return cleanSlot(n, dir)
}

func cleanSlot(n int, dir string) bool {
	if st, err := os.ReadFile(filepath.Join(dir, "state")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(st))
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		if len(lines) == 2 && strings.HasPrefix(lines[1], "/tmp/gp-") {
			hostDir := lines[1]
			for _, pf := range []string{"sshd.pid", "docker.pid", "exec/containerd/containerd.pid"} {
				killRecorded(filepath.Join(hostDir, pf), hostDir)
			}
			exec.Command("ip", "netns", "del", lines[0]).Run()
			os.RemoveAll(hostDir)
		}
	}
	for _, suffix := range []string{"h", "j"} {
		exec.Command("ip", "link", "del", fmt.Sprintf("gp%d%s", n, suffix)).Run()
	}
	return os.RemoveAll(dir) == nil
}
