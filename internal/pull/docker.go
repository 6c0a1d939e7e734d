package pull

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
)

// DockerDaemon is a Docker Engine reached through the moby client: the
// runner's, or a remote one whose client dials over SSH.
type DockerDaemon struct {
	Client *client.Client
}

// OpenLocalDocker returns a Target Open func for the daemon at host
// (empty: DOCKER_HOST, else the default socket).
func OpenLocalDocker(host string) func(ctx context.Context) (Daemon, error) {
	return func(ctx context.Context) (Daemon, error) {
		opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
		if host != "" {
			opts = append(opts, client.WithHost(host))
		}
		cli, err := client.New(opts...)
		if err != nil {
			return nil, &failure.BadInput{Input: "docker-host", Problem: err.Error(), Fix: "use unix:///path/to/docker.sock or tcp://host:port"}
		}
		if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
			cli.Close()
			return nil, fmt.Errorf("the Docker daemon at %s does not answer (%v); start it, set docker-host, or use destination: none", cli.DaemonHost(), err)
		}
		return &DockerDaemon{Client: cli}, nil
	}
}

// Close releases the client's connections.
func (d *DockerDaemon) Close() error { return d.Client.Close() }

// RegistryAuth encodes credentials for the pull call's X-Registry-Auth
// header: base64url JSON, as the Engine API defines it. Nothing is written
// to any config.json on either side.
func RegistryAuth(creds ghcr.Credentials) (string, error) {
	if creds.IsAnonymous() {
		return "", nil
	}
	b, err := json.Marshal(registry.AuthConfig{Username: creds.Username, Password: creds.Password})
	if err != nil {
		return "", err
	}
	return base64.URLEncoding.EncodeToString(b), nil
}

// Pull implements Daemon.
func (d *DockerDaemon) Pull(ctx context.Context, ref, platform string, creds ghcr.Credentials, progress ProgressFunc) (bool, error) {
	auth, err := RegistryAuth(creds)
	if err != nil {
		return false, err
	}
	opts := client.ImagePullOptions{RegistryAuth: auth}
	if platform != "" {
		p, err := ParsePlatform(platform)
		if err != nil {
			return false, err
		}
		opts.Platforms = []ocispec.Platform{p}
	}
	resp, err := d.Client.ImagePull(ctx, ref, opts)
	if err != nil {
		return false, classifyDaemonCallError(ctx, err, creds)
	}
	defer resp.Close()

	layers := map[string][2]int64{}
	downloaded := false
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			// A broken stream (daemon restarted, connection reset) is
			// transient; Classify knows those errors.
			return false, ghcr.Classify(err, creds.IsAnonymous())
		}
		if msg.Error != nil {
			return false, failure.FromDaemon(msg.Error.Code, msg.Error.Message, creds.IsAnonymous())
		}
		if strings.HasPrefix(msg.Status, "Status: Downloaded newer image") {
			downloaded = true
		}
		if msg.Progress != nil && msg.ID != "" && msg.Status == "Downloading" && msg.Progress.Total > 0 {
			layers[msg.ID] = [2]int64{msg.Progress.Current, msg.Progress.Total}
			if progress != nil {
				var done, total int64
				for _, l := range layers {
					done += l[0]
					total += l[1]
				}
				progress(done, total)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return false, ghcr.Classify(err, creds.IsAnonymous())
	}
	return downloaded, nil
}

// classifyDaemonCallError places an error of the pull call itself (before
// any stream): the daemon maps registry answers onto HTTP statuses only
// loosely (dockerd 20.10 sends rejected credentials as 500), so both the
// status and the text count.
func classifyDaemonCallError(ctx context.Context, err error, creds ghcr.Credentials) error {
	if ctx.Err() != nil {
		return ghcr.Classify(ctx.Err(), creds.IsAnonymous())
	}
	status := http.StatusInternalServerError
	switch {
	case cerrdefs.IsUnauthorized(err):
		status = http.StatusUnauthorized
	case cerrdefs.IsPermissionDenied(err):
		status = http.StatusForbidden
	case cerrdefs.IsNotFound(err):
		status = http.StatusNotFound
	case cerrdefs.IsUnavailable(err):
		status = http.StatusServiceUnavailable
	case cerrdefs.IsInvalidArgument(err):
		return &failure.BadInput{Input: "image", Problem: err.Error()}
	}
	if !cerrdefs.IsUnknown(err) && status == http.StatusInternalServerError && client.IsErrConnectionFailed(err) {
		return fmt.Errorf("the Docker daemon is unreachable: %w", err)
	}
	return failure.FromDaemon(status, err.Error(), creds.IsAnonymous())
}

// Inspect implements Daemon.
func (d *DockerDaemon) Inspect(ctx context.Context, ref string) (ImageInfo, error) {
	res, err := d.Client.ImageInspect(ctx, ref)
	if err != nil {
		return ImageInfo{}, err
	}
	platform := strings.TrimRight(res.Os+"/"+res.Architecture+"/"+res.Variant, "/")
	return ImageInfo{ID: res.ID, RepoDigests: res.RepoDigests, Platform: platform}, nil
}

// ParsePlatform reads os/arch[/variant].
func ParsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(strings.TrimSpace(s), "/")
	bad := &failure.BadInput{Input: "platform", Problem: fmt.Sprintf("%q is not os/arch[/variant]", s), Fix: "e.g. linux/amd64 or linux/arm64/v8"}
	if len(parts) < 2 || len(parts) > 3 {
		return ocispec.Platform{}, bad
	}
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, " \t:@") {
			return ocispec.Platform{}, bad
		}
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}
