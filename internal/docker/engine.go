// Package docker is ghcr-pull's adapter to a Docker Engine, through the
// moby client: the runner's daemon, or a remote one whose connections are
// dialled by the caller (over SSH, say). It pulls with the credentials only
// in the pull call's X-Registry-Auth header and reports what the daemon
// did; it knows nothing of SSH or of the pull policy.
package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// Engine is a Docker Engine, or Podman's Docker-compatible service,
// reached through the moby client.
type Engine struct {
	client *client.Client
	server *pingServer
	conn   io.Closer // what Over's connections travel in; nil for Open
}

// Names of the engines behind the Docker Engine API.
const (
	Docker = "docker"
	Podman = "podman"
)

// pingServer keeps what the daemon said of itself in its ping answer.
type pingServer struct {
	mu     sync.Mutex
	header http.Header
}

// hook records the headers of /_ping answers (the moby client's ping
// result keeps only the API version and OS type).
func (p *pingServer) hook(resp *http.Response) {
	if resp == nil || resp.Request == nil || !strings.HasSuffix(resp.Request.URL.Path, "/_ping") {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.header = resp.Header.Clone()
}

// name is the engine the ping answer came from. Podman's service names
// itself in every answer ("Server: Libpod/4.3.1 (linux)", and
// Libpod-Api-Version); dockerd says "Server: Docker/28.2.2 (linux)". The
// socket path proves nothing: rootless Docker and Podman both serve
// /run/user/<uid>/..., and a Podman socket is often linked to
// /var/run/docker.sock.
func (p *pingServer) name() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.header.Get("Libpod-Api-Version") != "" || strings.HasPrefix(p.header.Get("Server"), "Libpod/") {
		return Podman
	}
	return Docker
}

// Open reaches the daemon at host (empty: DOCKER_HOST, else the default
// socket) and checks that it answers. Its errors name host as Host ({Host}
// in their text), for the caller to name as its users know it.
func Open(ctx context.Context, host string) (*Engine, error) {
	server := &pingServer{}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation(), client.WithHTTPResponseHook(server.hook)}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, failure.Bad("Host", err.Error(), "use unix:///path/to/docker.sock or tcp://host:port")
	}
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("the Docker daemon at %s does not answer (%v); start it, set {Host}, or use destination: none", cli.DaemonHost(), err)
	}
	return &Engine{client: cli, server: server}, nil
}

// Over speaks the Engine API over connections from dial (each one reaches
// the daemon's socket; the network and address the client asks for do not
// matter) and checks that the daemon answers. conn, when not nil, is what
// those connections travel in (an SSH connection): the Engine owns it, and
// Close closes it after the client.
func Over(ctx context.Context, dial func(ctx context.Context) (net.Conn, error), conn io.Closer) (*Engine, error) {
	server := &pingServer{}
	cli, err := client.New(
		client.WithHost("http://docker"),
		client.WithDialContext(func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }),
		client.WithAPIVersionNegotiation(),
		client.WithHTTPResponseHook(server.hook),
	)
	if err != nil {
		return nil, err
	}
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, err
	}
	return &Engine{client: cli, server: server, conn: conn}, nil
}

// Close releases the client's connections, then what they travel in.
func (e *Engine) Close() error {
	err := e.client.Close()
	if e.conn != nil {
		err = errors.Join(err, e.conn.Close())
	}
	return err
}

// Runtime names the runtime (docker or podman, from its ping answer);
// neither has namespaces to report.
func (e *Engine) Runtime() (name, namespace string) { return e.server.name(), "" }

// RegistryAuth encodes credentials for the pull call's X-Registry-Auth
// header: base64url JSON, as the Engine API defines it. Nothing is written
// to any config.json on either side. With a registry token only the token
// is sent: dockerd uses registrytoken as the bearer token of the pull
// (its distribution code's existingTokenHandler, 20.10 and later), so the
// daemon never holds the username and password.
//
// An anonymous token (the probe's, for a public repository) is sent the
// same way: it holds no secret and saves the daemon a token request.
func RegistryAuth(creds registryauth.Credentials) (string, error) {
	auth := registry.AuthConfig{RegistryToken: creds.RegistryToken}
	switch {
	case creds.RegistryToken != "":
	case creds.IsAnonymous():
		return "", nil
	default:
		auth = registry.AuthConfig{Username: creds.Username, Password: creds.Password}
	}
	return encodeAuth(auth)
}

// PodmanRegistryAuth encodes credentials for Podman's compat API, which
// keeps only username, password and identitytoken of X-Registry-Auth
// (podman 4.3's auth.GetCredentials) and drops registrytoken: a scoped
// token alone pulls anonymously there, and a private image is refused
// ("Requesting bearer token: invalid status code from registry 403").
// So Podman gets the username and password, as containerd's CRI does,
// for this one call: Podman writes them to no auth file. Anonymous sends
// nothing; Podman fetches its own anonymous token.
func PodmanRegistryAuth(creds registryauth.Credentials) (string, error) {
	if creds.IsAnonymous() {
		return "", nil
	}
	return encodeAuth(registry.AuthConfig{Username: creds.Username, Password: creds.Password})
}

func encodeAuth(auth registry.AuthConfig) (string, error) {
	b, err := json.Marshal(auth)
	if err != nil {
		return "", err
	}
	return base64.URLEncoding.EncodeToString(b), nil
}

// Pull pulls ref (platform nil: the daemon's own) with creds and reports
// whether anything new was downloaded, and progress as the daemon reports
// it. Its error is classified.
//
// Downloaded: dockerd ends its stream with "Status: Downloaded newer
// image for <ref>" when ref was not there before, "Image is up to date"
// when it was. Podman's stream ends with "Download complete" either way,
// so for Podman ref (pinned by digest) is inspected first: downloaded
// means it was not there.
func (e *Engine) Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	podman := e.server.name() == Podman
	encode := RegistryAuth
	if podman {
		encode = PodmanRegistryAuth
	}
	auth, err := encode(creds)
	if err != nil {
		return false, err
	}
	var present bool
	if podman {
		if present, err = e.has(ctx, ref); err != nil {
			return false, classifyCall(ctx, err, creds)
		}
	}
	opts := client.ImagePullOptions{RegistryAuth: auth}
	if platform != nil {
		opts.Platforms = []ocispec.Platform{*platform}
	}
	resp, err := e.client.ImagePull(ctx, ref, opts)
	if err != nil {
		return false, classifyCall(ctx, err, creds)
	}
	defer resp.Close()

	layers := map[string][2]int64{}
	downloaded := false
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			// A broken stream (daemon restarted, connection reset) is
			// transient; Classify knows those errors.
			return false, failure.FromNetwork(err)
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
		return false, failure.FromNetwork(err)
	}
	if podman {
		return !present, nil
	}
	return downloaded, nil
}

// has reports whether the engine holds ref.
func (e *Engine) has(ctx context.Context, ref string) (bool, error) {
	_, err := e.client.ImageInspect(ctx, ref)
	switch {
	case err == nil:
		return true, nil
	case cerrdefs.IsNotFound(err):
		return false, nil
	}
	return false, err
}

// classifyCall places an error of the pull call itself (before any
// stream): the daemon maps registry answers onto HTTP statuses only
// loosely (dockerd 20.10 sends rejected credentials as 500), so both the
// status and the text count.
func classifyCall(ctx context.Context, err error, creds registryauth.Credentials) error {
	if ctx.Err() != nil {
		return failure.FromNetwork(ctx.Err())
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
		return failure.Bad("image", err.Error(), "")
	}
	if !cerrdefs.IsUnknown(err) && status == http.StatusInternalServerError && client.IsErrConnectionFailed(err) {
		return fmt.Errorf("the Docker daemon is unreachable: %w", err)
	}
	return failure.FromDaemon(status, err.Error(), creds.IsAnonymous())
}

// Tag points target (a tag reference) at the image source names, as
// `docker tag` does: after a pull by digest, the user's tag names exactly
// that digest.
func (e *Engine) Tag(ctx context.Context, source, target string) error {
	_, err := e.client.ImageTag(ctx, client.ImageTagOptions{Source: source, Target: target})
	return err
}

// Remove removes the name ref, as `docker rmi` does without pruning
// untagged parents; the image goes only with its last name.
func (e *Engine) Remove(ctx context.Context, ref string) error {
	_, err := e.client.ImageRemove(ctx, ref, client.ImageRemoveOptions{PruneChildren: false})
	return err
}

// Inspect describes a local image.
func (e *Engine) Inspect(ctx context.Context, ref string) (image.Info, error) {
	res, err := e.client.ImageInspect(ctx, ref)
	if err != nil {
		return image.Info{}, err
	}
	return image.Info{ID: res.ID, RepoDigests: image.ParseRepoDigests(res.RepoDigests), Platform: image.PlatformOf(res.Os, res.Architecture, res.Variant)}, nil
}

// Mirrors lists the registry mirrors the daemon is configured with
// (registry-mirrors in daemon.json, --registry-mirror), as the Engine
// API's registry config reports them: URLs such as
// "https://mirror.gcr.io/". dockerd uses them for Docker Hub only.
func (e *Engine) Mirrors(ctx context.Context) ([]string, error) {
	res, err := e.client.Info(ctx, client.InfoOptions{})
	if err != nil {
		return nil, err
	}
	if res.Info.RegistryConfig == nil {
		return nil, nil
	}
	return res.Info.RegistryConfig.Mirrors, nil
}

// ConfigIDs reports whether the daemon's image IDs are config digests: so
// in the graphdriver image store, not in containerd's (Docker 29's default
// for new installs, "driver-type" io.containerd.snapshotter.v1 in /info),
// where an image's ID is its manifest's or index's digest.
func (e *Engine) ConfigIDs(ctx context.Context) (bool, error) {
	res, err := e.client.Info(ctx, client.InfoOptions{})
	if err != nil {
		return false, err
	}
	for _, kv := range res.Info.DriverStatus {
		if kv[0] == "driver-type" && strings.Contains(kv[1], "snapshotter") {
			return false, nil
		}
	}
	return true, nil
}
