// Package sshdeploy reaches container runtimes on remote hosts over SSH.
// Parse checks the SSH and remote runtime inputs and applies their defaults,
// once. Open dials a host (host keys verified, bastions by ProxyJump),
// finds its runtime by one route discovery (stream-local channels, Docker's
// dial-stdio last; docs/runtimes.md) and returns the runtime adapter
// (internal/docker, internal/cri), which owns the connection. With
// Settings.Relay the host pulls from the runner through a remote forward.
// Nothing secret is sent to a host but inside the runtime's API calls.
package sshdeploy

// The rest of the package's notes, kept from go doc's summary above.
//
// Two routes lead to a socket. The first is a direct-streamlocal@openssh.com
// channel (what `ssh -L local:/var/run/docker.sock` uses): it needs nothing on
// the remote host but sshd's AllowStreamLocalForwarding, which defaults to
// yes. When sshd rejects that channel, Docker has a second route, the one
// the docker CLI itself uses for ssh:// hosts: an exec of `docker system
// dial-stdio`, which needs the docker CLI on the remote PATH. containerd's
// gRPC has only the first.
//
// Nothing secret crosses to the remote host through this package: the only
// remote commands are `docker -H unix://<socket> system dial-stdio` and,
// looking for a non-root user's rootless engine, one that prints `id -u`
// and $XDG_RUNTIME_DIR, and registry credentials travel later inside
// Engine API or CRI requests on the tunnelled connection, never on a
// command line, in an environment variable or in a file.
//
// With Settings.Relay (ssh-transfer: relay), a host pulls from the runner
// instead of the registry: a remote forward on the host's loopback
// (tcpip-forward, sshd's AllowTcpForwarding) carries its dockerd's or
// containerd's registry requests to the relay, which holds the
// credentials; the host gets none (relay.go, relay_containerd.go).
//
// The package knows nothing about GitHub Actions: inputs arrive as values,
// and errors about them are *failure.BadInput values naming the input.
//
// Its surface is Parse and Open; everything else (the connection, the
// routes, discovery) is unexported and tested inside the package against
// an in-process SSH server, and end to end through Open against OpenSSH.
