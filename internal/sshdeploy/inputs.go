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

// Inputs are the raw values of the SSH and remote runtime inputs, as the
// action received them; empty means the default.
type Inputs struct {
	Hosts                 string // [user@]host[:port], by newlines or commas
	User                  string // default root
	Port                  string // default 22
	Key                   string // the private key, OpenSSH or PEM
	KeyPassphrase         string // the key's passphrase, when it is encrypted
	KnownHosts            string // known_hosts lines
	Fingerprints          string // SHA256:... host key fingerprints
	InsecureIgnoreHostKey string // true or false; default false
	ProxyJump             string // bastions, written as Hosts; default none
	Timeout               string // default 30s
	Runtime               string // auto, docker, podman or containerd; default auto
	DockerSocket          string // default /var/run/docker.sock
	ContainerdSocket      string // default /run/containerd/containerd.sock
	ContainerdNamespace   string // k8s.io, the only one
}

// Settings are Inputs checked, parsed and defaulted: everything Open needs
// for every host.
type Settings struct {
	Hosts []Host
	// Relay, when set, is where the hosts pull from (ssh-transfer: relay):
	// through a remote forward on their loopback, never the registry.
	Relay Relay

	runtime          runtimeKind
	dockerSocket     string // the Docker Engine API socket on the hosts
	containerdSocket string
	config           dialConfig
}

// Insecure tells whether host keys go unchecked
// (ssh-insecure-ignore-host-key), for the warning that deserves.
func (s *Settings) Insecure() bool { return s.config.HostKeys.Insecure() }

// Parse checks every input at once and applies every default, here and
// nowhere else. The error joins one *failure.BadInput per bad input;
// nothing is dialled. Host key coverage is checked too
// (hostKeyPolicy.CheckHosts), so a missing ssh-known-hosts fails here with
// the ssh-keyscan command that gives it. With no host named Parse returns
// nil Settings, having checked only the remote runtime inputs: a misspelt
// remote-runtime fails wherever it is set.
func Parse(in Inputs) (*Settings, error) {
	var errs []error
	bad := func(err error) { errs = append(errs, err) }
	s := &Settings{}
	var err error
	if s.runtime, err = parseRuntime(in.Runtime); err != nil {
		bad(err)
	}
	if s.dockerSocket, err = parseSocket(settingDockerSocket, in.DockerSocket, defaultDockerSocket, "/var/run/docker.sock or /run/user/1000/docker.sock"); err != nil {
		bad(err)
	}
	if s.containerdSocket, err = parseSocket(settingContainerdSocket, in.ContainerdSocket, cri.DefaultSocket, "/run/containerd/containerd.sock, or /run/k3s/containerd/containerd.sock on k3s"); err != nil {
		bad(err)
	}
	// containerd's CRI plugin puts every image it pulls into k8s.io,
	// whatever namespace the caller names: accepting another value would
	// report a namespace the image is not in.
	if ns := strings.TrimSpace(in.ContainerdNamespace); ns != "" && ns != cri.Namespace {
		bad(failure.Bad(settingContainerdNamespace, fmt.Sprintf("%q: ghcr-pull pulls through containerd's CRI image service, as the kubelet does, and that always pulls into %s", ns, cri.Namespace),
			"leave {ContainerdNamespace} at k8s.io (see docs/containerd.md)"))
	}
	if strings.TrimSpace(in.Hosts) == "" {
		return nil, errors.Join(errs...)
	}

	user := strings.TrimSpace(in.User)
	if user == "" {
		user = defaultUser
	} else if strings.ContainsAny(user, "@:[] \t") || strings.HasPrefix(user, "-") {
		bad(failure.Bad(settingUser, fmt.Sprintf("%q is not a valid user name", user), ""))
		user = defaultUser
	}
	port := defaultPort
	if strings.TrimSpace(in.Port) != "" {
		p, err := parsePort(in.Port)
		if err != nil {
			bad(failure.Bad(settingPort, err.Error(), ""))
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

	signer, err := parsePrivateKey(in.Key, in.KeyPassphrase)
	if err != nil {
		bad(err)
	}

	insecure := false
	if v := strings.TrimSpace(in.InsecureIgnoreHostKey); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad(failure.Bad(settingInsecureIgnoreHostKey, fmt.Sprintf("%q is not true or false", v), ""))
		}
		insecure = b
	}
	policy, err := parseHostKeyPolicy(in.KnownHosts, in.Fingerprints, insecure)
	if err != nil {
		bad(err)
	} else if hosts != nil {
		if err := policy.CheckHosts(hosts, jumps); err != nil {
			bad(err)
		}
	}

	timeout, err := parseTimeout(in.Timeout)
	if err != nil {
		bad(err)
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.Hosts = hosts
	s.config = dialConfig{Signer: signer, HostKeys: policy, ProxyJump: jumps, Timeout: timeout}
	return s, nil
}

// parseSocket reads a socket input (remote-docker-socket,
// remote-containerd-socket): an absolute path, or a unix:// URL; empty is
// def. example names likely values for the fix.
func parseSocket(input, s, def, example string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return def, nil
	}
	path := strings.TrimPrefix(s, "unix://")
	switch {
	case strings.Contains(path, "://"):
		return "", failure.Bad(input, fmt.Sprintf("%q is not a unix socket", s), "give the socket's path on the hosts, e.g. "+example)
	case !strings.HasPrefix(path, "/"):
		return "", failure.Bad(input, fmt.Sprintf("%q is not an absolute path", s), "e.g. "+example)
	case strings.ContainsFunc(path, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "", failure.Bad(input, "contains control characters", "")
	}
	return path, nil
}

// parseTimeout reads ssh-timeout: a Go duration (30s, 2m) or a number of
// seconds. Empty means defaultTimeout.
func parseTimeout(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return defaultTimeout, nil
	}
	if _, err := strconv.Atoi(s); err == nil {
		s += "s"
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, failure.Bad(settingTimeout, fmt.Sprintf("%q is not a positive duration", s), "e.g. 30s or 2m")
	}
	return d, nil
}

// parseRuntime reads remote-runtime; empty is auto.
func parseRuntime(kind string) (runtimeKind, error) {
	k := runtimeKind(strings.ToLower(strings.TrimSpace(kind)))
	switch k {
	case "":
		return kindAuto, nil
	case kindAuto, kindDocker, kindPodman, kindContainerd:
		return k, nil
	}
	return "", failure.Bad(settingRuntime, fmt.Sprintf("%q is not a runtime", kind), "use auto, docker, podman or containerd")
}
