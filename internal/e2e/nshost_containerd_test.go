package e2e

// A remote host of Kind WithContainerd is a Kubernetes node without the
// kubelet: Debian's containerd (1.6, its CRI plugin enabled) in the host's
// network namespace, with its own root, state, config and socket under the
// host's directory, and no dockerd. sshd runs in a private mount namespace
// with a tmpfs over /run (so neither the runner's /var/run/docker.sock nor
// anything else of the machine's /run is there, as on a node without
// Docker) in which the host's containerd socket is bind-mounted at
// /run/containerd/containerd.sock, the default path.
//
// containerd itself runs in a private mount namespace too: the overlay
// mounts it makes while unpacking never reach the machine's, and vanish
// with it.
//
// Plain HTTP: containerd 1.6 has no CIDR form of insecure registries (the
// remote dockerd's --insecure-registry 10.231.0.0/16). Its CRI plugin reads
// registry host configuration from config_path (certs.d/<host:port>/
// hosts.toml) at each pull, so every address ExposeOnHost hands out, and
// any given to AllowPlainHTTP, gets a hosts.toml with an http:// server on
// every containerd host, now and started later. The deprecated
// registry.mirrors/configs tables would need the address when containerd
// starts, and cannot be combined with config_path.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ContainerdNodeSocket is containerd's socket as SSH sessions (and sshd's
// stream-local forwarding) see it on a containerd host.
const ContainerdNodeSocket = "/run/containerd/containerd.sock"

// ContainerdSnapshotter is the snapshotter the hosts' CRI plugin unpacks
// into.
const ContainerdSnapshotter = "overlayfs"

// plainHTTP is the set of registry addresses containerd hosts reach over
// plain HTTP, and the containerd hosts running.
var plainHTTP = struct {
	sync.Mutex
	addrs  []string
	hosts  map[*RemoteHost]bool
	podman map[*RemoteHost]bool // Podman hosts (nshost_podman_test.go)
}{hosts: map[*RemoteHost]bool{}, podman: map[*RemoteHost]bool{}}

func containerdUnsupported() string {
	for _, tool := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s is not installed (Debian: containerd)", tool)
		}
	}
	return ""
}

func (h *RemoteHost) containerdDir(parts ...string) string {
	return filepath.Join(append([]string{h.Dir, "containerd"}, parts...)...)
}

// ContainerdSocket is the host's containerd socket as the machine sees
// it, for assertions (ctr --address). Like DockerSocket, do not pass it
// to the action: on the host it is ContainerdNodeSocket.
func (h *RemoteHost) ContainerdSocket() string { return filepath.Join(h.Dir, "containerd.sock") }

// ContainerdLog is the host's containerd log.
func (h *RemoteHost) ContainerdLog() string { return h.readLog("containerd.log", 0) }

func (h *RemoteHost) containerdConfig() string {
	return containerdConfig(h.containerdDir, h.ContainerdSocket(), containerdPods{})
}

// containerdPods is what a containerd that runs pods (the cluster's node)
// adds to a config; the zero value is a containerd that only pulls.
type containerdPods struct {
	sandboxImage string
}

// containerdConfig is the one containerd configuration of the e2e tests,
// under dir (root, state, cni, certs.d, opt), serving sock.
func containerdConfig(dir func(...string) string, sock string, pods containerdPods) string {
	var criKeys, runtimes string
	if pods.sandboxImage != "" {
		criKeys = fmt.Sprintf(`    sandbox_image = %q
    # The test sandbox lacks CAP_SYS_RESOURCE: without this every pod
    # sandbox fails with "can't get final child's PID from pipe: EOF".
    restrict_oom_score_adj = true
`, pods.sandboxImage)
		runtimes = `      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
`
	}
	return fmt.Sprintf(`version = 2
root = %q
state = %q
# Snapshotters this machine cannot run only add noise to the log.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
%s    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = %q
%s    # A CNI configuration of containerd's own (the cluster's node writes
    # one it never calls; a pulling host none).
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %q
      conf_dir = %q
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = %q
  [plugins."io.containerd.internal.v1.opt"]
    path = %q
`, dir("root"), dir("state"), sock, sock+".ttrpc", criKeys, ContainerdSnapshotter, runtimes,
		dir("cni", "bin"), dir("cni", "net.d"), dir("certs.d"), dir("opt"))
}

func (h *RemoteHost) startContainerd() error {
	for _, dir := range []string{h.containerdDir("cni", "bin"), h.containerdDir("cni", "net.d"), h.containerdDir("certs.d"), h.containerdDir("tmp")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	cfg := h.containerdDir("config.toml")
	if err := os.WriteFile(cfg, []byte(h.containerdConfig()), 0o600); err != nil {
		return err
	}
	plainHTTP.Lock()
	plainHTTP.hosts[h] = true
	addrs := append([]string(nil), plainHTTP.addrs...)
	plainHTTP.Unlock()
	for _, a := range addrs {
		if err := h.writeHostsTOML(a); err != nil {
			return err
		}
	}
	// Ready when the CRI plugin has loaded: without it PullImage is
	// unimplemented, and the plugin can fail on its own while the rest of
	// containerd runs.
	return h.runDaemon(&h.containerd, "containerd", "containerd.log", h.ContainerdSocket(), func() error {
		if !fileExists(h.ContainerdSocket()) {
			return errors.New("no socket yet")
		}
		out, err := exec.Command("ctr", "--address", h.ContainerdSocket(), "plugins", "ls").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) >= 4 && f[0] == "io.containerd.grpc.v1" && f[1] == "cri" {
				if f[len(f)-1] == "ok" {
					return nil
				}
				return gaveUp{fmt.Errorf("its CRI plugin did not load (%s)", l)}
			}
		}
		return errors.New("no CRI plugin listed yet")
	}, "unshare", "--mount", "--propagation", "private", "--",
		"env", "TMPDIR="+h.containerdDir("tmp"), "containerd", "--config", cfg)
}

// containerdMounts wraps sshd's command line for a containerd host: a
// mount namespace of its own, a tmpfs over /run, sshd's privilege
// separation directory, and the containerd socket at ContainerdNodeSocket.
func (h *RemoteHost) containerdMounts(args []string) []string {
	script := `mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/sshd /run/containerd && ` +
		`touch ` + ContainerdNodeSocket + ` && mount --bind "$0" ` + ContainerdNodeSocket + ` && exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, h.ContainerdSocket()}, args...)
}

func (h *RemoteHost) stopContainerd() {
	plainHTTP.Lock()
	delete(plainHTTP.hosts, h)
	plainHTTP.Unlock()
	h.stopProcess(&h.containerd, 15*time.Second)
}

// AllowPlainHTTP lets every containerd and Podman host, now and later, pull from the
// registry at addr (host:port) over plain HTTP. ExposeOnHost calls it.
func AllowPlainHTTP(addr string) error {
	plainHTTP.Lock()
	defer plainHTTP.Unlock()
	plainHTTP.addrs = append(plainHTTP.addrs, addr)
	for h := range plainHTTP.hosts {
		if err := h.writeHostsTOML(addr); err != nil {
			return err
		}
	}
	for h := range plainHTTP.podman {
		if err := h.restartPodman(plainHTTP.addrs); err != nil {
			return err
		}
	}
	return nil
}

// writeHostsTOML is containerd's per-registry configuration: on Linux the
// directory is named host:port as it is.
func (h *RemoteHost) writeHostsTOML(addr string) error {
	dir := h.containerdDir("certs.d", addr)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+addr, "http://"+addr)
	return os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o600)
}

// Ctr runs ctr against the host's containerd (as the machine reaches it)
// and returns its output; a failure fails tb.
func (h *RemoteHost) Ctr(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command("ctr", append([]string{"--address", h.ContainerdSocket()}, args...)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("remote host %s: ctr %s: %v\n%s", h.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
