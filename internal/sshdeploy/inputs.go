package sshdeploy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/cri"
	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Inputs are the raw values of the SSH inputs, as the action received them.
type Inputs struct {
	Hosts                 string // ssh-host
	User                  string // ssh-user; empty means DefaultUser
	Port                  string // ssh-port; empty means DefaultPort
	Key                   string // ssh-key
	KeyPassphrase         string // ssh-key-passphrase
	KnownHosts            string // ssh-known-hosts
	Fingerprints          string // ssh-fingerprint
	InsecureIgnoreHostKey string // ssh-insecure-ignore-host-key: true or false
	ProxyJump             string // ssh-proxy-jump
	Socket                string // remote-docker-socket; empty means DefaultDockerSocket
	Timeout               string // ssh-timeout; empty means DefaultTimeout
}

// Settings are Inputs checked and parsed: everything Open needs for
// every host.
type Settings struct {
	Hosts []Host
	// Socket is the Docker daemon's socket on the hosts.
	Socket string
	// Runtime says what to pull into (set from ParseRuntime).
	Runtime RuntimeChoice
	Config  Config
	// Relay, when set, is where the hosts pull from (ssh-transfer: relay):
	// through a remote forward on their loopback, never the registry.
	Relay Relay
}

// ParseInputs checks every SSH input at once. The error joins one
// *failure.BadInput per bad input; nothing is dialled. Host key coverage is
// checked too (HostKeyPolicy.CheckHosts), so a missing ssh-known-hosts
// fails here with the ssh-keyscan command that gives it.
func ParseInputs(in Inputs) (*Settings, error) {
	var errs []error
	bad := func(err error) { errs = append(errs, err) }

	user := strings.TrimSpace(in.User)
	if user == "" {
		user = DefaultUser
	} else if strings.ContainsAny(user, "@:[] \t") || strings.HasPrefix(user, "-") {
		bad(&failure.BadInput{Input: InputUser, Problem: fmt.Sprintf("%q is not a valid user name", user)})
		user = DefaultUser
	}
	port := DefaultPort
	if strings.TrimSpace(in.Port) != "" {
		p, err := parsePort(in.Port)
		if err != nil {
			bad(&failure.BadInput{Input: InputPort, Problem: err.Error()})
		} else {
			port = p
		}
	}

	hosts, err := parseHosts(in.Hosts, user, port)
	if err != nil {
		bad(err)
	}
	jumps, err := parseProxyJump(in.ProxyJump, user, port)
	if err != nil {
		bad(err)
	}

	signer, err := ParsePrivateKey(in.Key, in.KeyPassphrase)
	if err != nil {
		bad(err)
	}

	insecure := false
	if v := strings.TrimSpace(in.InsecureIgnoreHostKey); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad(&failure.BadInput{Input: InputInsecure, Problem: fmt.Sprintf("%q is not true or false", v)})
		}
		insecure = b
	}
	policy, err := ParseHostKeyPolicy(in.KnownHosts, in.Fingerprints, insecure)
	if err != nil {
		bad(err)
	} else if hosts != nil {
		if err := policy.CheckHosts(hosts, jumps); err != nil {
			bad(err)
		}
	}

	socket, err := parseSocket(in.Socket)
	if err != nil {
		bad(err)
	}
	timeout, err := parseTimeout(in.Timeout)
	if err != nil {
		bad(err)
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Settings{
		Hosts:   hosts,
		Socket:  socket,
		Runtime: RuntimeChoice{Kind: Auto, ContainerdSocket: cri.DefaultSocket},
		Config:  Config{Signer: signer, HostKeys: policy, ProxyJump: jumps, Timeout: timeout},
	}, nil
}

// parseSocket reads remote-docker-socket: an absolute path, or a
// unix:// URL. Empty means DefaultDockerSocket.
func parseSocket(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return defaultDockerSocket, nil
	}
	path := strings.TrimPrefix(s, "unix://")
	switch {
	case strings.Contains(path, "://"):
		return "", &failure.BadInput{Input: InputSocket, Problem: fmt.Sprintf("%q is not a unix socket", s), Fix: "give the socket's path on the hosts, e.g. /var/run/docker.sock or /run/user/1000/docker.sock"}
	case !strings.HasPrefix(path, "/"):
		return "", &failure.BadInput{Input: InputSocket, Problem: fmt.Sprintf("%q is not an absolute path", s), Fix: "e.g. /var/run/docker.sock"}
	case strings.ContainsFunc(path, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "", &failure.BadInput{Input: InputSocket, Problem: "contains control characters"}
	}
	return path, nil
}

// parseTimeout reads ssh-timeout: a Go duration (30s, 2m) or a number of
// seconds. Empty means DefaultTimeout.
func parseTimeout(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return DefaultTimeout, nil
	}
	if _, err := strconv.Atoi(s); err == nil {
		s += "s"
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, &failure.BadInput{Input: InputTimeout, Problem: fmt.Sprintf("%q is not a positive duration", s), Fix: "e.g. 30s or 2m"}
	}
	return d, nil
}

// RuntimeChoice is what to pull into on the hosts.
type RuntimeChoice struct {
	Kind RuntimeKind
	// ContainerdSocket is containerd's socket on the hosts.
	ContainerdSocket string
}

// ParseRuntime reads remote-runtime, remote-containerd-socket and
// containerd-namespace; empty values take the defaults.
func ParseRuntime(kind, socket, namespace string) (RuntimeChoice, error) {
	k := RuntimeKind(strings.ToLower(strings.TrimSpace(kind)))
	switch k {
	case "":
		k = Auto
	case Auto, Docker, Podman, Containerd:
	default:
		return RuntimeChoice{}, &failure.BadInput{Input: InputRuntime, Problem: fmt.Sprintf("%q is not a runtime", kind), Fix: "use auto, docker, podman or containerd"}
	}
	sock := strings.TrimPrefix(strings.TrimSpace(socket), "unix://")
	switch {
	case sock == "":
		sock = cri.DefaultSocket
	case !strings.HasPrefix(sock, "/"):
		return RuntimeChoice{}, &failure.BadInput{Input: InputContainerdSocket, Problem: fmt.Sprintf("%q is not an absolute path", sock), Fix: "e.g. /run/containerd/containerd.sock, or /run/k3s/containerd/containerd.sock on k3s"}
	case strings.ContainsFunc(sock, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return RuntimeChoice{}, &failure.BadInput{Input: InputContainerdSocket, Problem: "contains control characters"}
	}
	// containerd's CRI plugin puts every image it pulls into k8s.io,
	// whatever namespace the caller names: accepting another value would
	// report a namespace the image is not in.
	if ns := strings.TrimSpace(namespace); ns != "" && ns != cri.Namespace {
		return RuntimeChoice{}, &failure.BadInput{Input: InputContainerdNamespace, Problem: fmt.Sprintf("%q: ghcr-pull pulls through containerd's CRI image service, as the kubelet does, and that always pulls into %s", ns, cri.Namespace),
			Fix: "leave containerd-namespace at k8s.io (see docs/containerd.md)"}
	}
	return RuntimeChoice{Kind: k, ContainerdSocket: sock}, nil
}
