package pull

import (
	"context"
	"errors"
	"fmt"

	"github.com/moby/moby/client"

	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// remoteDocker is a Docker daemon reached over one SSH connection; closing
// it closes both.
type remoteDocker struct {
	*DockerDaemon
	conn *sshdeploy.Conn
}

func (r *remoteDocker) Close() error {
	return errors.Join(r.DockerDaemon.Close(), r.conn.Close())
}

// Route says how the daemon socket was reached (stream-local or dial-stdio).
func (r *remoteDocker) Route() string { return string(r.conn.Route()) }

// OpenRemoteDocker returns a Target Open func for the Docker daemon on host,
// reached over SSH as settings say. The Engine API runs over the SSH
// connection itself, so credentials travel only inside the pull call's
// X-Registry-Auth header: nothing is written on the host, nothing is on a
// remote command line.
func OpenRemoteDocker(host sshdeploy.Host, settings *sshdeploy.Settings) func(ctx context.Context) (Daemon, error) {
	return func(ctx context.Context) (Daemon, error) {
		conn, err := sshdeploy.Dial(ctx, host, settings.Config)
		if err != nil {
			return nil, err
		}
		d, err := openDockerOver(ctx, conn, host, settings.Socket)
		if err != nil {
			conn.Close()
			return nil, err
		}
		return d, nil
	}
}

// openDockerOver reaches the Docker daemon at socket through conn; on
// failure conn stays open, for the caller to close or use otherwise.
func openDockerOver(ctx context.Context, conn *sshdeploy.Conn, host sshdeploy.Host, socket string) (Daemon, error) {
	cli, err := client.New(
		client.WithHost("http://docker"),
		client.WithDialContext(conn.DockerDialer(socket)),
		client.WithAPIVersionNegotiation(),
	)
	if err != nil {
		return nil, err
	}
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("reached %s over SSH, but not its Docker daemon at %s: %w", host.Addr(), socket, err)
	}
	return &remoteDocker{DockerDaemon: &DockerDaemon{Client: cli}, conn: conn}, nil
}
