package docker

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// Container is what the daemon says of the container this process runs in.
type Container struct {
	ID, Image string
	// Entrypoint is the program the container runs (this binary).
	Entrypoint string
	// HostNetwork: the container shares the host's network namespace, so
	// its 127.0.0.1 is the daemon's.
	HostNetwork bool
	// IP is the container's address on its network, Gateway that
	// network's gateway: the source of connections from the host.
	IP, Gateway netip.Addr
}

// Self finds the container this process runs in: by the hostname (Docker
// names a container's host after its short ID unless told otherwise, and
// the GitHub runner does not), else by the ID in the paths of the files
// Docker mounts into every container (/etc/hostname and friends, read
// from /proc/self/mountinfo), so a --hostname set on the container does
// not hide it. ok is false when the daemon has no such container (the
// command line, a daemon on another machine).
func (e *Engine) Self(ctx context.Context) (c Container, ok bool, err error) {
	// The mountinfo is read only when the hostname names no container.
	candidates := []func() string{
		func() string { h, _ := os.Hostname(); return h },
		func() string { b, _ := os.ReadFile("/proc/self/mountinfo"); return containerIDFromMountinfo(string(b)) },
	}
	for _, candidate := range candidates {
		name := candidate()
		if name == "" {
			continue
		}
		res, err := e.client.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
		if cerrdefs.IsNotFound(err) || cerrdefs.IsInvalidArgument(err) {
			continue
		}
		if err != nil {
			return c, false, err
		}
		return self(res.Container)
	}
	return c, false, nil
}

// containerIDFromMountinfo reads the container ID from the source of the
// /etc/hostname, /etc/hosts or /etc/resolv.conf bind mount, which Docker
// keeps under .../containers/<64 hex>/; "" when none is there.
func containerIDFromMountinfo(mountinfo string) string {
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		switch f[4] {
		case "/etc/hostname", "/etc/hosts", "/etc/resolv.conf":
		default:
			continue
		}
		_, rest, ok := strings.Cut(f[3], "/containers/")
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, "/")
		if len(id) == 64 && strings.Trim(id, "0123456789abcdef") == "" {
			return id
		}
	}
	return ""
}

func self(in container.InspectResponse) (c Container, ok bool, err error) {
	c = Container{ID: in.ID, Image: in.Image, Entrypoint: in.Path}
	var mode container.NetworkMode
	if in.HostConfig != nil {
		mode = in.HostConfig.NetworkMode
	}
	if mode.IsHost() {
		c.HostNetwork = true
		return c, true, nil
	}
	if in.NetworkSettings != nil {
		// The runner's job network, or the default bridge.
		for _, n := range in.NetworkSettings.Networks {
			if n != nil && n.IPAddress.Is4() {
				c.IP, c.Gateway = n.IPAddress, n.Gateway
				break
			}
		}
	}
	if !c.IP.IsValid() {
		return c, true, fmt.Errorf("the action's container %s has no IPv4 address on a network the host can reach (network mode %s)", shortID(c.ID), mode)
	}
	return c, true, nil
}

// ForwarderLabel marks the containers RunOnHost starts.
const ForwarderLabel = "io.github.ghcr-pull.relay-forward"

// RunOnHost starts image's entrypoint with args in a container on the
// host's network namespace, labelled ForwarderLabel and removed by the
// daemon when it exits, and returns its ID and the first line it prints.
// The caller removes it (RemoveContainer) when done.
func (e *Engine) RunOnHost(ctx context.Context, image, entrypoint string, args []string) (id, firstLine string, err error) {
	created, err := e.client.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config: &container.Config{Image: image, Entrypoint: []string{entrypoint}, Cmd: args, Tty: true,
			Labels: map[string]string{ForwarderLabel: "true"}},
		HostConfig: &container.HostConfig{NetworkMode: "host", AutoRemove: true},
	})
	if err != nil {
		return "", "", err
	}
	id = created.ID
	defer func() {
		if err != nil {
			_ = e.RemoveContainer(context.WithoutCancel(ctx), id)
		}
	}()
	if _, err := e.client.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return id, "", err
	}
	// The logs from the start (following a container not yet running
	// ends at once); a TTY makes the stream plain text.
	logs, err := e.client.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if err != nil {
		return id, "", err
	}
	defer logs.Close()
	line, err := bufio.NewReader(logs).ReadString('\n')
	if err != nil {
		return id, "", fmt.Errorf("the container %s ended before it said anything: %w", shortID(id), err)
	}
	return id, strings.TrimSpace(line), nil
}

// RemoveContainer removes container id, running or not; one already gone
// is not an error.
func (e *Engine) RemoveContainer(ctx context.Context, id string) error {
	_, err := e.client.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
	if cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) {
		// Conflict: the daemon is already removing it (AutoRemove).
		return nil
	}
	return err
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
