// Package sshdeploy is everything about reaching a remote host: it parses
// the SSH settings (hosts, private key, known hosts, fingerprints, a
// bastion), verifies host keys by default, dials hosts directly or through
// ProxyJump bastions, decides once per connection the route to a runtime's
// socket, finds the runtime on the host (Docker, Podman, the SSH user's
// rootless engines, then containerd: docs/runtimes.md), and
// opens it over the connection with the runtime adapters (internal/docker,
// internal/cri). Open is the one entry point of a pull.
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
package sshdeploy
