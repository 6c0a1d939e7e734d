package sshdeploy

import (
	"errors"
	"fmt"
	"strings"
)

// The settings errors name: each is the name of its field of Inputs. A
// *failure.BadInput's Input is one, and any text may name one as
// {Field}; the caller gives them the names its users know (the action: its
// inputs, at one boundary). {Transfer} is how the hosts reach images, the
// caller's choice between pulling from the registry and Settings.Relay.
const (
	settingHosts                 = "Hosts"
	settingUser                  = "User"
	settingPort                  = "Port"
	settingKey                   = "Key"
	settingKeyPassphrase         = "KeyPassphrase"
	settingKnownHosts            = "KnownHosts"
	settingFingerprints          = "Fingerprints"
	settingInsecureIgnoreHostKey = "InsecureIgnoreHostKey"
	settingProxyJump             = "ProxyJump"
	settingDockerSocket          = "DockerSocket"
	settingTimeout               = "Timeout"
	settingRuntime               = "Runtime"
	settingContainerdSocket      = "ContainerdSocket"
	settingContainerdNamespace   = "ContainerdNamespace"
)

// hostKeyError says a host presented a key the policy does not accept. It is
// returned during the key exchange, before the client authenticates or opens
// any channel, so nothing has been sent to the host.
type hostKeyError struct {
	// Host is the address dialled, host:port.
	Host string
	// Presented lists the keys the host presented ("ssh-ed25519 SHA256:..."),
	// one per attempt: with fingerprints only, each key type is tried in
	// turn, since a fingerprint does not say which type it belongs to.
	Presented []string
	// Expected lists what would have been accepted for this host.
	Expected []string
	// Revoked is set when the key is marked @revoked in the known hosts.
	Revoked bool
	// Port is the SSH port, for the ssh-keyscan hint.
	Port int
	// Name is the host name or address, for the ssh-keyscan hint.
	Name string
}

func (e *hostKeyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "host key verification failed for %s: ", e.Host)
	if e.Revoked {
		fmt.Fprintf(&b, "it presented %s, which {KnownHosts} marks @revoked", strings.Join(e.Presented, ", "))
	} else {
		fmt.Fprintf(&b, "it presented %s, which matches neither {KnownHosts} nor {Fingerprints}", strings.Join(e.Presented, ", "))
		if len(e.Expected) > 0 {
			fmt.Fprintf(&b, " (expected %s)", strings.Join(e.Expected, ", "))
		}
	}
	b.WriteString("; nothing was sent to the host. If the host was reinstalled, refresh the value with `")
	b.WriteString(keyscanCommand(e.Port, e.Name))
	b.WriteString("` run from a network you trust; otherwise the connection may be intercepted")
	return b.String()
}

// dialStage says how far a connection got before it failed.
type dialStage string

const (
	stageConnect   dialStage = "connect"   // TCP (or the bastion's forwarded channel)
	stageHandshake dialStage = "handshake" // key exchange, host key verification
	stageAuth      dialStage = "auth"      // user authentication with Key
)

// dialError is a failure to reach a host. Via names the bastion the failing
// hop was dialled through, if any. It wraps *hostKeyError when the host key
// was refused.
type dialError struct {
	Host  string
	Via   string
	Stage dialStage
	Err   error
	Fix   string
}

func (e *dialError) Error() string {
	s := fmt.Sprintf("ssh %s: %s failed", e.Host, e.Stage)
	if e.Via != "" {
		s += " (through " + e.Via + ")"
	}
	s += ": " + e.Err.Error()
	if e.Fix != "" {
		s += " (" + e.Fix + ")"
	}
	return s
}

func (e *dialError) Unwrap() error { return e.Err }

// routeError says neither route reached the Docker daemon socket.
type routeError struct {
	Host   string
	Socket string
	// StreamLocal is the rejection of the direct-streamlocal channel.
	StreamLocal error
	// DialStdio is the failure of `docker system dial-stdio`, usually a
	// *dialStdioError.
	DialStdio error
}

func (e *routeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cannot reach the Docker daemon at %s on %s by either route: ", e.Socket, e.Host)
	fmt.Fprintf(&b, "(1) stream-local forwarding (direct-streamlocal@openssh.com) was rejected: %v"+
		" — sshd answers so when AllowStreamLocalForwarding is no in its sshd_config, or when the socket is missing or not accessible to the user; ", e.StreamLocal)
	fmt.Fprintf(&b, "(2) `docker system dial-stdio` failed: %v", e.DialStdio)
	var ds *dialStdioError
	if errors.As(e.DialStdio, &ds) && ds.CommandNotFound() {
		b.WriteString(" — docker: command not found on the remote PATH (non-interactive SSH sessions do not read ~/.profile or ~/.bashrc)")
	}
	fmt.Fprintf(&b, ". Fix: set AllowStreamLocalForwarding yes in the host's sshd_config, or put the docker CLI on the PATH of its SSH sessions; check that %s is the daemon's socket ({DockerSocket}) and that the SSH user may open it", e.Socket)
	return b.String()
}

func (e *routeError) Unwrap() []error { return []error{e.StreamLocal, e.DialStdio} }

// dialStdioError is how `docker system dial-stdio` ended on the remote host
// when it did not carry a connection to the daemon.
type dialStdioError struct {
	// ExitStatus is the remote command's exit status (-1 when unknown).
	ExitStatus int
	// Stderr is the end of what the command wrote to stderr, clipped.
	Stderr string
}

func (e *dialStdioError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = "no message"
	}
	if e.ExitStatus >= 0 {
		return fmt.Sprintf("exit status %d: %s", e.ExitStatus, msg)
	}
	return msg
}

// CommandNotFound tells whether the shell could not find the docker CLI.
// 127 is the shell's status for it; its words are matched too because a
// wrapper around the command (a ForceCommand, a login script) may exit
// with a status of its own and leave only the shell's message. These are
// a shell's words, not a registry's relayed by a daemon, so they are not
// failure's phrase table's to know.
func (e *dialStdioError) CommandNotFound() bool {
	return e.ExitStatus == 127 || strings.Contains(e.Stderr, "command not found") || strings.Contains(e.Stderr, "docker: not found")
}
