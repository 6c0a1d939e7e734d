package e2e

// A remote host started with WithPodman runs rootful Podman's
// Docker-compatible service (`podman system service`, as the podman.socket
// unit starts it) in the host's network namespace, with its storage, run
// root, temporary directory, events log, auth file and registries.conf all
// under the host's directory (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF,
// CONTAINERS_REGISTRIES_CONF, REGISTRY_AUTH_FILE), so the machine's
// /var/lib/containers and /run/containers are never touched. The vfs
// storage driver makes no mounts; the service still runs in a private
// mount namespace. sshd runs, as on a containerd host, with a tmpfs over
// /run where the service's socket directory is bind-mounted at
// /run/podman, so /run/podman/podman.sock is the host's Podman at its
// default path and there is no /var/run/docker.sock (WithDockerAndPodman
// adds the host's dockerd there). SSH sessions get the same CONTAINERS_*
// environment, so `podman pull` in a session uses the same storage.
//
// Plain HTTP: Podman reads registries.conf once per process (containers/
// image caches it), so every address AllowPlainHTTP learns is written as an
// insecure [[registry]] and the service restarted; the socket lives in a
// directory that stays bind-mounted, so sshd sees the new one.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/moby/client"
)

var (
	// WithPodman runs rootful Podman's Docker-compatible service, no dockerd.
	WithPodman HostKind = podmanKind{}
	// WithDockerAndPodman runs both, each at its default socket.
	WithDockerAndPodman HostKind = dockerAndPodmanKind{}
)

// PodmanNodeSocket is rootful Podman's socket as SSH sessions (and sshd's
// stream-local forwarding) see it.
const PodmanNodeSocket = "/run/podman/podman.sock"

type podmanKind struct{}

func (podmanKind) String() string            { return "podman" }
func (podmanKind) unsupported() string       { return podmanUnsupported() }
func (podmanKind) start(h *RemoteHost) error { return h.startPodman() }
func (podmanKind) sshdCommand(h *RemoteHost, args []string) []string {
	return h.podmanMounts(args, false)
}

type dockerAndPodmanKind struct{}

func (dockerAndPodmanKind) String() string      { return "dockerd and podman" }
func (dockerAndPodmanKind) unsupported() string { return podmanUnsupported() }
func (dockerAndPodmanKind) start(h *RemoteHost) error {
	if err := h.startDockerd(); err != nil {
		return err
	}
	return h.startPodman()
}
func (dockerAndPodmanKind) sshdCommand(h *RemoteHost, args []string) []string {
	return h.podmanMounts(args, true)
}

func podmanUnsupported() string {
	if _, err := exec.LookPath("podman"); err != nil {
		return "podman is not installed (Debian: podman)"
	}
	return ""
}

func (h *RemoteHost) podmanDir(parts ...string) string {
	return filepath.Join(append([]string{h.Dir, "podman"}, parts...)...)
}

// PodmanSocket is the host's Podman socket as the machine sees it, for
// assertions. Do not pass it to the action: on the host it is
// PodmanNodeSocket.
func (h *RemoteHost) PodmanSocket() string {
	if h.rootless != nil {
		return h.rootlessPodmanSocket()
	}
	return h.podmanDir("run", "podman.sock")
}

// PodmanLog is the service's log.
func (h *RemoteHost) PodmanLog() string { return h.readLog("podman.log", 0) }

// PodmanAuthFile is where Podman would keep a login (REGISTRY_AUTH_FILE).
func (h *RemoteHost) PodmanAuthFile() string { return h.podmanDir("auth.json") }

// podmanEnv points every Podman of this host (the service, and the CLI in
// SSH sessions) at the host's own configuration.
func (h *RemoteHost) podmanEnv() []string {
	return []string{
		"CONTAINERS_CONF=" + h.podmanDir("containers.conf"),
		"CONTAINERS_STORAGE_CONF=" + h.podmanDir("storage.conf"),
		"CONTAINERS_REGISTRIES_CONF=" + h.podmanDir("registries.conf"),
		"REGISTRY_AUTH_FILE=" + h.PodmanAuthFile(),
		"TMPDIR=" + h.podmanDir("tmp"),
	}
}

func (h *RemoteHost) writePodmanConfig(plain []string) error {
	d := h.podmanDir
	containers := fmt.Sprintf(`[engine]
tmp_dir = %q
volume_path = %q
static_dir = %q
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q

[network]
network_config_dir = %q
`, d("tmp"), d("volumes"), d("static"), d("events.log"), d("net"))
	storage := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", d("root"), d("runroot"))
	var reg strings.Builder
	reg.WriteString("unqualified-search-registries = []\n")
	for _, a := range plain {
		fmt.Fprintf(&reg, "\n[[registry]]\nlocation = %q\ninsecure = true\n", a)
	}
	for name, content := range map[string]string{"containers.conf": containers, "storage.conf": storage, "registries.conf": reg.String()} {
		// Readable by a rootless host's user; nothing secret in them.
		if err := os.WriteFile(d(name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (h *RemoteHost) startPodman() error {
	for _, dir := range []string{h.podmanDir("run"), h.podmanDir("tmp"), h.podmanDir("net")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if u := h.rootless; u != nil {
			if err := os.Chown(dir, u.uid, u.gid); err != nil {
				return err
			}
		}
	}
	if u := h.rootless; u != nil {
		if err := os.Chown(h.podmanDir(), u.uid, u.gid); err != nil {
			return err
		}
	}
	plainHTTP.Lock()
	plainHTTP.podman[h] = true
	addrs := append([]string(nil), plainHTTP.addrs...)
	plainHTTP.Unlock()
	// Sessions share the storage and configuration; not REGISTRY_AUTH_FILE,
	// which the CLI refuses while the file does not exist.
	var env []string
	for _, kv := range h.podmanEnv() {
		if !strings.HasPrefix(kv, "REGISTRY_AUTH_FILE=") {
			env = append(env, kv)
		}
	}
	h.mu.Lock()
	h.sessionEnv = env
	h.mu.Unlock()
	return h.runPodman(addrs)
}

// runPodman writes the configuration and starts the service.
func (h *RemoteHost) runPodman(plain []string) error {
	if err := h.writePodmanConfig(plain); err != nil {
		return err
	}
	args := append([]string{"unshare", "--mount", "--propagation", "private", "--", "env"}, h.podmanEnv()...)
	args = append(args, "podman", "system", "service", "--time=0", "unix://"+h.PodmanSocket())
	if h.rootless != nil {
		args = h.rootlessPodmanCommand()
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", h.PodmanSocket())
	}}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	return h.runDaemon(&h.podman, "podman system service", "podman.log", h.PodmanSocket(), func() error {
		resp, err := hc.Get("http://podman/_ping")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.Header.Get("Libpod-Api-Version") == "" {
			return errors.New("no Libpod-Api-Version in its answer")
		}
		return nil
	}, args...)
}

// restartPodman rereads registries.conf, which Podman caches.
func (h *RemoteHost) restartPodman(plain []string) error {
	h.stopPodman()
	return h.runPodman(plain)
}

func (h *RemoteHost) stopPodman() {
	h.stopProcess(&h.podman, 15*time.Second)
	h.killUserProcesses()
}

// podmanMounts wraps sshd's command line: a mount namespace of its own, a
// tmpfs over /run, sshd's privilege separation directory, Podman's socket
// directory at /run/podman and, withDocker, the host's dockerd socket at
// /run/docker.sock (/var/run is /run).
func (h *RemoteHost) podmanMounts(args []string, withDocker bool) []string {
	script := `mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/sshd /run/podman && mount --bind "$0" /run/podman`
	if withDocker {
		script += ` && touch /run/docker.sock && mount --bind "$1" /run/docker.sock`
	}
	script += ` && shift && exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, h.podmanDir("run"), h.DockerSocket()}, args...)
}

// Podman is a client of the host's Podman through its Docker-compatible
// API, for assertions; the caller closes it.
func (h *RemoteHost) Podman() (*client.Client, error) {
	return client.New(client.WithHost("unix://"+h.PodmanSocket()), client.WithAPIVersionNegotiation())
}
