package e2e

// A remote host started with WithRootlessPodman is reached as an
// unprivileged login user who runs Podman's service as itself, with its
// socket in its runtime directory: /run/user/<uid>/podman/podman.sock, as
// `systemctl --user enable --now podman.socket` leaves it. Nothing rootful
// runs there: sshd (root, as on any host) and the user's service.
//
// The user exists only for this host: sshd and the service run in mount
// namespaces where /etc/passwd, /etc/group, /etc/subuid and /etc/subgid
// are bind-mounted copies with the user added (uid 23000+slot, 65536
// subordinate ids from 200000+slot*65536), so the machine's user database
// is never written. Its home and runtime directory are under the host's
// directory; in sshd's namespace /run is a tmpfs holding /run/sshd and
// /run/user/<uid> (the runtime directory, bind-mounted). sshd runs with
// UsePAM no, so sessions have no XDG_RUNTIME_DIR: discovery finds the
// socket by `id -u`, as on a host without pam_systemd.
//
// Rootless Podman keeps a pause process (its user namespace) after the
// service ends; Stop ends every process of the user in the host's network
// namespace.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

var (
	// WithRootlessPodman: rootless Podman's service, reached as its user.
	WithRootlessPodman HostKind = rootlessPodmanKind{}
	// WithRootlessDocker: rootless dockerd (dockerd-rootless.sh, in
	// rootlesskit with slirp4netns), reached as its user.
	WithRootlessDocker HostKind = rootlessDockerKind{}
)

type rootlessUser struct {
	name     string
	uid, gid int
}

type rootlessPodmanKind struct{}

func (rootlessPodmanKind) String() string      { return "rootless podman" }
func (rootlessPodmanKind) unsupported() string { return rootlessUnsupported() }
func (rootlessPodmanKind) start(h *RemoteHost) error {
	if err := h.makeRootlessUser(); err != nil {
		return err
	}
	return h.startPodman()
}
func (rootlessPodmanKind) sshdCommand(h *RemoteHost, args []string) []string {
	return h.rootlessMounts(args)
}

type rootlessDockerKind struct{}

func (rootlessDockerKind) String() string { return "rootless dockerd" }
func (rootlessDockerKind) unsupported() string {
	if r := rootlessUnsupported(); r != "" {
		return r
	}
	for _, tool := range []string{"rootlesskit", "slirp4netns"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (Debian: " + tool + ")"
		}
	}
	if _, err := os.Stat(dockerdRootless); err != nil {
		return dockerdRootless + " is missing (Debian: docker.io)"
	}
	return ""
}
func (rootlessDockerKind) start(h *RemoteHost) error {
	if err := h.makeRootlessUser(); err != nil {
		return err
	}
	return h.startRootlessDockerd()
}
func (rootlessDockerKind) sshdCommand(h *RemoteHost, args []string) []string {
	return h.rootlessMounts(args)
}

// dockerdRootless is Debian's copy of Docker's rootless launcher.
const dockerdRootless = "/usr/share/docker.io/contrib/dockerd-rootless.sh"

// rootlessMounts wraps sshd's command line: the user database with the
// user, a tmpfs over /run, and the user's runtime directory at
// /run/user/<uid>.
func (h *RemoteHost) rootlessMounts(args []string) []string {
	u := h.rootless
	script := h.userDBMounts() + ` && mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/sshd /run/user/` + strconv.Itoa(u.uid) +
		` && mount --bind "$0" /run/user/` + strconv.Itoa(u.uid) + ` && exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, h.xdgDir()}, args...)
}

func rootlessUnsupported() string {
	if r := podmanUnsupported(); r != "" {
		return r
	}
	for _, tool := range []string{"newuidmap", "newgidmap", "setpriv"} {
		if _, err := os.Stat("/usr/bin/" + tool); err != nil {
			return tool + " is not installed (Debian: uidmap, util-linux)"
		}
	}
	return ""
}

// xdgDir is the user's runtime directory, /run/user/<uid> on the host.
func (h *RemoteHost) xdgDir() string { return filepath.Join(h.Dir, "xdg") }

func (h *RemoteHost) etcFile(name string) string { return filepath.Join(h.Dir, "etc", name) }

// userDBMounts is the shell that puts the copies of the user database in
// place, in a mount namespace of the caller's.
func (h *RemoteHost) userDBMounts() string {
	var parts []string
	for _, f := range []string{"passwd", "group", "subuid", "subgid"} {
		parts = append(parts, "mount --bind "+quoteForShell(h.etcFile(f))+" /etc/"+f)
	}
	return strings.Join(parts, " && ")
}

func (h *RemoteHost) makeRootlessUser() error {
	u := &rootlessUser{name: fmt.Sprintf("gp-rl%d", h.slot), uid: 23000 + h.slot, gid: 23000 + h.slot}
	home := filepath.Join(h.Dir, "home")
	for _, d := range []string{filepath.Join(h.Dir, "etc"), home, h.xdgDir(), filepath.Join(h.xdgDir(), "podman")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	add := map[string]string{
		"passwd": fmt.Sprintf("%s:x:%d:%d:ghcr-pull e2e:%s:/bin/sh\n", u.name, u.uid, u.gid, home),
		"group":  fmt.Sprintf("%s:x:%d:\n", u.name, u.gid),
		"subuid": fmt.Sprintf("%s:%d:65536\n", u.name, 200000+h.slot*65536),
		"subgid": fmt.Sprintf("%s:%d:65536\n", u.name, 200000+h.slot*65536),
	}
	for f, line := range add {
		base, err := os.ReadFile("/etc/" + f)
		if err != nil {
			return err
		}
		if len(base) > 0 && base[len(base)-1] != '\n' {
			base = append(base, '\n')
		}
		if err := os.WriteFile(h.etcFile(f), append(base, line...), 0o644); err != nil {
			return err
		}
	}
	// The user reaches its own files: the host's directory is traversable,
	// its home and runtime directory are its own, and sshd reads the
	// authorized keys as the user.
	if err := os.Chmod(h.Dir, 0o711); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(h.Dir, "authorized_keys"), 0o644); err != nil {
		return err
	}
	for _, d := range []string{home, h.xdgDir(), filepath.Join(h.xdgDir(), "podman")} {
		if err := os.Chown(d, u.uid, u.gid); err != nil {
			return err
		}
	}
	h.mu.Lock()
	h.rootless = u
	h.mu.Unlock()
	return nil
}

// rootlessPodmanCommand runs the service as the user, in a mount namespace
// where the user exists.
func (h *RemoteHost) rootlessPodmanCommand() []string {
	u := h.rootless
	env := append([]string{"HOME=" + filepath.Join(h.Dir, "home"), "USER=" + u.name, "LOGNAME=" + u.name,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "XDG_RUNTIME_DIR=" + h.xdgDir()}, h.podmanEnv()...)
	inner := []string{"setpriv", "--reuid=" + strconv.Itoa(u.uid), "--regid=" + strconv.Itoa(u.gid), "--clear-groups",
		"env", "-i"}
	inner = append(inner, env...)
	inner = append(inner, "podman", "system", "service", "--time=0", "unix://"+h.rootlessPodmanSocket())
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", h.userDBMounts() + ` && exec "$@"`, "sh"}, inner...)
}

// rootlessPodmanSocket is the user's Podman socket as the machine sees it.
func (h *RemoteHost) rootlessPodmanSocket() string {
	return filepath.Join(h.xdgDir(), "podman", "podman.sock")
}

// killUserProcesses ends every process of the rootless user, whose uid
// is this host's alone: Podman's pause process outlives the service, and
// rootless dockerd's processes run in network namespaces of their own.
func (h *RemoteHost) killUserProcesses() {
	if h.rootless == nil {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name(), &st) == nil && int(st.Uid) == h.rootless.uid {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// RootlessDockerSocket is the user's dockerd socket as the machine sees it.
func (h *RemoteHost) RootlessDockerSocket() string { return filepath.Join(h.xdgDir(), "docker.sock") }

// startRootlessDockerd runs dockerd-rootless.sh as the user. Its daemon.json
// uses vfs (overlayfs in a user namespace cannot stack on this machine's
// overlay root) and leaves iptables and bridges alone. The machine's
// /dev/net/tun is root's alone (crw-------, as this container ships it),
// and slirp4netns needs a tap device: the launcher's mount namespace gets
// a tun node of its own, mode 0666, bind-mounted there.
func (h *RemoteHost) startRootlessDockerd() error {
	u := h.rootless
	home := filepath.Join(h.Dir, "home")
	cfgDir := filepath.Join(home, ".config", "docker")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		return err
	}
	insecure := `"` + allSubnets + `"`
	for _, r := range h.spec.InsecureRegistries {
		insecure += `, "` + r + `"`
	}
	cfg := `{"storage-driver": "vfs", "iptables": false, "bridge": "none", "insecure-registries": [` + insecure + `]}` + "\n"
	if err := os.WriteFile(filepath.Join(cfgDir, "daemon.json"), []byte(cfg), 0o644); err != nil {
		return err
	}
	for _, d := range []string{filepath.Join(home, ".config"), cfgDir} {
		if err := os.Chown(d, u.uid, u.gid); err != nil {
			return err
		}
	}
	tun := filepath.Join(h.Dir, "tun")
	if err := syscall.Mknod(tun, syscall.S_IFCHR|0o666, 10<<8|200); err != nil {
		return fmt.Errorf("a tun node for slirp4netns: %w", err)
	}
	if err := os.Chmod(tun, 0o666); err != nil {
		return err
	}
	script := h.userDBMounts() + " && mount --bind " + quoteForShell(tun) + ` /dev/net/tun && exec "$@"`
	args := []string{"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh",
		"setpriv", "--reuid=" + strconv.Itoa(u.uid), "--regid=" + strconv.Itoa(u.gid), "--clear-groups",
		"env", "-i", "HOME=" + home, "USER=" + u.name, "LOGNAME=" + u.name,
		"PATH=" + filepath.Dir(dockerdRootless) + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
		"XDG_RUNTIME_DIR=" + h.xdgDir(), dockerdRootless}
	return h.runDockerd("rootless dockerd", h.RootlessDockerSocket(), args)
}
