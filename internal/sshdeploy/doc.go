// Package sshdeploy reaches Docker daemons on remote hosts over SSH.
//
// It parses the SSH settings (hosts, private key, known hosts, fingerprints,
// a bastion), verifies host keys by default, dials hosts directly or through
// ProxyJump bastions, and gives the Docker Go client a dial function that
// reaches the remote daemon's socket.
//
// Two routes lead to the socket. The first is a direct-streamlocal@openssh.com
// channel (what `ssh -L local:/var/run/docker.sock` uses): it needs nothing on
// the remote host but sshd's AllowStreamLocalForwarding, which defaults to
// yes. When sshd rejects that channel, the second route is the one the docker
// CLI itself uses for ssh:// hosts: an exec of `docker system dial-stdio`,
// which needs the docker CLI on the remote PATH. Which route worked is
// remembered per connection and reported.
//
// Nothing secret crosses to the remote host through this package: the only
// remote command is `docker -H unix://<socket> system dial-stdio`, and
// registry credentials travel later inside Engine API requests on the
// tunnelled connection, never on a command line, in an environment variable
// or in a file.
//
// The package knows nothing about GitHub Actions: inputs arrive as values,
// and errors about them are *failure.BadInput values naming the input.
package sshdeploy
