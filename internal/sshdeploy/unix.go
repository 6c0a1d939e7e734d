package sshdeploy

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/crypto/ssh"
)

// dialUnix opens a connection to the unix socket at path on the host over
// a direct-streamlocal@openssh.com channel, and by no other route: unlike
// Docker's (dial-stdio) there is no command that would carry an arbitrary
// socket's protocol over a session. It runs nothing on the host.
//
// When sshd rejects the channel the error wraps the *ssh.OpenChannelError
// (see isChannelRejected): OpenSSH 9.2 gives the same "open failed" for a
// missing socket, one the user may not open, and AllowStreamLocalForwarding
// no, so a caller probing for a socket treats any rejection as "not here".
func (c *sshConn) dialUnix(ctx context.Context, path string) (net.Conn, error) {
	if path == "" {
		return nil, errors.New("sshdeploy: dialUnix needs a socket path")
	}
	conn, err := c.dialStreamLocal(ctx, path)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("ssh %s: opening a channel to %s: %w", c.host, path, err)
	}
	return conn, nil
}

// isChannelRejected tells whether err is sshd's refusal to open a channel
// (the socket is missing or not accessible, or forwarding is forbidden),
// as opposed to a broken connection.
func isChannelRejected(err error) bool {
	var rejected *ssh.OpenChannelError
	return errors.As(err, &rejected)
}
