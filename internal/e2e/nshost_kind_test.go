package e2e

// HostKind is what a remote host runs beside sshd; one type per kind
// replaces booleans that selected behaviour in several places.
type HostKind interface {
	String() string
	// unsupported says why the machine cannot run this kind ("" if it can).
	unsupported() string
	// start starts the runtime, before sshd.
	start(h *RemoteHost) error
	// sshdCommand wraps sshd's command line, so that SSH sessions and
	// stream-local forwarding see this kind's socket at its default path.
	sshdCommand(h *RemoteHost, args []string) []string
}

var (
	// NoRuntime is sshd alone: a bastion, or a host with no daemon.
	NoRuntime HostKind = noRuntime{}
	// WithDockerd runs a dockerd of the host's own.
	WithDockerd HostKind = dockerdKind{}
	// WithContainerd runs containerd with its CRI plugin and no dockerd.
	WithContainerd HostKind = containerdKind{}
)

type noRuntime struct{}

func (noRuntime) String() string                                    { return "sshd only" }
func (noRuntime) unsupported() string                               { return "" }
func (noRuntime) start(*RemoteHost) error                           { return nil }
func (noRuntime) sshdCommand(_ *RemoteHost, args []string) []string { return args }

type dockerdKind struct{}

func (dockerdKind) String() string            { return "dockerd" }
func (dockerdKind) unsupported() string       { return "" }
func (dockerdKind) start(h *RemoteHost) error { return h.startDockerd() }
func (dockerdKind) sshdCommand(h *RemoteHost, args []string) []string {
	if !fileExists(machineDockerSocket) {
		return args
	}
	// The filesystem is the machine's, so /var/run/docker.sock would be
	// the runner's daemon: a pull meant for the remote would land on the
	// runner. sshd runs in a mount namespace of its own where that path is
	// the remote dockerd's socket, as on a real host (the bind mount is
	// private to sshd and its sessions).
	return append([]string{"unshare", "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", `mount --bind "$0" ` + machineDockerSocket + ` && exec "$@"`, h.DockerSocket()}, args...)
}

type containerdKind struct{}

func (containerdKind) String() string            { return "containerd" }
func (containerdKind) unsupported() string       { return containerdUnsupported() }
func (containerdKind) start(h *RemoteHost) error { return h.startContainerd() }
func (containerdKind) sshdCommand(h *RemoteHost, args []string) []string {
	return h.containerdMounts(args)
}
