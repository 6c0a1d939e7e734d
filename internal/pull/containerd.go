package pull

// containerd hosts (k3s, kubeadm and managed Kubernetes nodes) are pulled
// onto through containerd's CRI image service, the API the kubelet itself
// uses: PullImage with the credentials in the request's AuthConfig. The pull
// runs inside containerd on the node (layers go from the registry straight
// to the node), is unpacked for the snapshotter the CRI plugin is configured
// with (so a pod starts from it without pulling again), and the credentials
// live only in that one request: nothing is written on the node. Why CRI and
// not the containerd client: docs/containerd.md.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// Runtime is the container runtime images are pulled into on a host.
type Runtime string

const (
	// RuntimeAuto uses whichever socket the host has, Docker's first.
	RuntimeAuto       Runtime = "auto"
	RuntimeDocker     Runtime = "docker"
	RuntimeContainerd Runtime = "containerd"
)

// DefaultContainerdSocket is where containerd listens unless told
// otherwise; k3s uses /run/k3s/containerd/containerd.sock.
const DefaultContainerdSocket = "/run/containerd/containerd.sock"

// CRINamespace is the containerd namespace of every image pulled through
// the CRI image service. containerd's CRI plugin sets it on each call,
// whatever namespace the caller names, and it is the one the kubelet reads.
const CRINamespace = "k8s.io"

// RemoteRuntime says which runtime to pull into on remote hosts.
type RemoteRuntime struct {
	// Runtime is auto, docker or containerd; empty means auto.
	Runtime Runtime
	// ContainerdSocket is containerd's socket on the hosts; empty means
	// DefaultContainerdSocket.
	ContainerdSocket string
}

// RuntimeReporter is a Daemon that names its runtime and, for containerd,
// the namespace images land in; pull copies both into each Result.
type RuntimeReporter interface {
	Runtime() (runtime Runtime, namespace string)
}

// Runtime implements RuntimeReporter: Docker has no namespaces to report.
func (d *DockerDaemon) Runtime() (Runtime, string) { return RuntimeDocker, "" }

// OpenRemote returns a Target Open func for host's runtime, reached over
// one SSH connection as settings say. With RuntimeDocker it is exactly
// OpenRemoteDocker. With RuntimeAuto it looks for Docker's socket first,
// then containerd's, by stream-local channels (nothing runs on the host),
// and only when sshd rejects both tries Docker's dial-stdio route, which
// works where stream-local forwarding is forbidden.
func OpenRemote(host sshdeploy.Host, settings *sshdeploy.Settings, rt RemoteRuntime) func(ctx context.Context) (Daemon, error) {
	if rt.Runtime == RuntimeDocker {
		return OpenRemoteDocker(host, settings)
	}
	return func(ctx context.Context) (Daemon, error) {
		conn, err := sshdeploy.Dial(ctx, host, settings.Config)
		if err != nil {
			return nil, err
		}
		d, err := openRuntimeOver(ctx, conn, host, settings.Socket, rt)
		if err != nil {
			conn.Close()
			return nil, err
		}
		return d, nil
	}
}

func openRuntimeOver(ctx context.Context, conn *sshdeploy.Conn, host sshdeploy.Host, dockerSocket string, rt RemoteRuntime) (Daemon, error) {
	ctrdSocket := rt.ContainerdSocket
	if ctrdSocket == "" {
		ctrdSocket = DefaultContainerdSocket
	}
	if dockerSocket == "" {
		dockerSocket = sshdeploy.DefaultDockerSocket
	}
	if rt.Runtime == RuntimeContainerd {
		first, err := conn.DialUnix(ctx, ctrdSocket)
		if err != nil {
			if sshdeploy.IsChannelRejected(err) {
				return nil, fmt.Errorf("reached %s over SSH, but not containerd's socket: %w (sshd refuses the channel when the socket is missing, when the SSH user may not open it, or with AllowStreamLocalForwarding no; set remote-containerd-socket to the node's socket, e.g. /run/k3s/containerd/containerd.sock on k3s)", host.Addr(), err)
			}
			return nil, err
		}
		return openContainerdOver(ctx, conn, host, ctrdSocket, first)
	}

	probe, dockerErr := conn.DialUnix(ctx, dockerSocket)
	if dockerErr == nil {
		probe.Close()
		return openDockerOver(ctx, conn, host, dockerSocket)
	}
	if !sshdeploy.IsChannelRejected(dockerErr) {
		return nil, dockerErr
	}
	first, ctrdErr := conn.DialUnix(ctx, ctrdSocket)
	if ctrdErr == nil {
		return openContainerdOver(ctx, conn, host, ctrdSocket, first)
	}
	if !sshdeploy.IsChannelRejected(ctrdErr) {
		return nil, ctrdErr
	}
	d, err := openDockerOver(ctx, conn, host, dockerSocket)
	if err == nil {
		return d, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, &NoRuntimeError{Host: host.Addr(), DockerSocket: dockerSocket, Docker: err, ContainerdSocket: ctrdSocket, Containerd: ctrdErr}
}

// NoRuntimeError says a host offered neither a Docker nor a containerd
// socket at the paths tried.
type NoRuntimeError struct {
	Host             string
	DockerSocket     string
	Docker           error
	ContainerdSocket string
	Containerd       error
}

func (e *NoRuntimeError) Error() string {
	return fmt.Sprintf("found no container runtime on %s: tried Docker at %s (%v) and containerd at %s (%v); "+
		"point remote-docker-socket or remote-containerd-socket at the host's runtime, or set remote-runtime",
		e.Host, e.DockerSocket, e.Docker, e.ContainerdSocket, e.Containerd)
}

func (e *NoRuntimeError) Unwrap() []error { return []error{e.Docker, e.Containerd} }

// remoteContainerd is containerd's CRI service over one SSH connection;
// closing it closes both.
type remoteContainerd struct {
	*ContainerdDaemon
	conn *sshdeploy.Conn
}

func (r *remoteContainerd) Close() error {
	return errors.Join(r.ContainerdDaemon.Close(), r.conn.Close())
}

// openContainerdOver speaks gRPC to the containerd socket on the host
// through stream-local channels of conn; first is a channel already open
// (the one that found the socket), used for the first gRPC connection.
func openContainerdOver(ctx context.Context, conn *sshdeploy.Conn, host sshdeploy.Host, socket string, first net.Conn) (Daemon, error) {
	var mu sync.Mutex
	dial := func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		c := first
		first = nil
		mu.Unlock()
		if c != nil {
			return c, nil
		}
		return conn.DialUnix(ctx, socket)
	}
	d, err := NewContainerd(ctx, dial)
	mu.Lock()
	if first != nil {
		first.Close()
	}
	mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("reached containerd's socket %s on %s over SSH, but: %w", socket, host.Addr(), err)
	}
	return &remoteContainerd{ContainerdDaemon: d, conn: conn}, nil
}

// ContainerdDaemon is containerd's CRI image service, reached over any
// connection to its socket. It satisfies Daemon.
type ContainerdDaemon struct {
	cc     *grpc.ClientConn
	images runtimeapi.ImageServiceClient
	// Version is what the runtime says of itself, e.g. "containerd 1.6.20~ds1".
	Version string
}

// ErrNoCRI says containerd answers but serves no CRI v1 image service.
var ErrNoCRI = errors.New("containerd answers, but serves no CRI v1 API: its CRI plugin is disabled " +
	`(disabled_plugins = ["cri"] in /etc/containerd/config.toml, as the containerd.io package installed with Docker ships it) ` +
	"or it is older than 1.6; enable the plugin and restart containerd, or pull through Docker (remote-runtime: docker)")

// NewContainerd connects to containerd's CRI services through dial (called
// for each connection gRPC opens) and checks that they answer.
func NewContainerd(ctx context.Context, dial func(ctx context.Context) (net.Conn, error)) (*ContainerdDaemon, error) {
	cc, err := grpc.NewClient("passthrough:///containerd",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }),
	)
	if err != nil {
		return nil, err
	}
	v, err := runtimeapi.NewRuntimeServiceClient(cc).Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		cc.Close()
		if status.Code(err) == codes.Unimplemented {
			return nil, ErrNoCRI
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("the CRI service does not answer: %w", err)
	}
	return &ContainerdDaemon{
		cc:      cc,
		images:  runtimeapi.NewImageServiceClient(cc),
		Version: strings.TrimSpace(v.RuntimeName + " " + v.RuntimeVersion),
	}, nil
}

// Close ends the gRPC connection.
func (d *ContainerdDaemon) Close() error { return d.cc.Close() }

// Runtime implements RuntimeReporter.
func (d *ContainerdDaemon) Runtime() (Runtime, string) { return RuntimeContainerd, CRINamespace }

var _ io.Closer = (*ContainerdDaemon)(nil)

// Pull implements Daemon. CRI reports no progress, and it pulls the node's
// own platform (PullImageRequest has no platform): a platform asked for
// that the node does not run is an error after the fact.
func (d *ContainerdDaemon) Pull(ctx context.Context, ref, platform string, creds ghcr.Credentials, _ ProgressFunc) (bool, error) {
	var want ocispec.Platform
	if platform != "" {
		var err error
		if want, err = ParsePlatform(platform); err != nil {
			return false, err
		}
	}
	before, err := d.imageID(ctx, ref)
	if err != nil {
		return false, classifyCRI(ctx, err, creds)
	}
	req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}
	if !creds.IsAnonymous() {
		// As the kubelet sends an imagePullSecret: containerd uses it for
		// this pull's token requests and keeps it nowhere.
		req.Auth = &runtimeapi.AuthConfig{Username: creds.Username, Password: creds.Password}
	}
	resp, err := d.images.PullImage(ctx, req)
	if err != nil {
		return false, classifyCRI(ctx, err, creds)
	}
	if platform != "" {
		info, err := d.Inspect(ctx, ref)
		if err != nil {
			return false, classifyCRI(ctx, err, creds)
		}
		if !samePlatform(want, info.Platform) {
			return false, &failure.BadInput{Input: "platform",
				Problem: fmt.Sprintf("containerd pulls the node's own platform through CRI (the kubelet's API has no platform field): it pulled %s, not %s", info.Platform, platform),
				Fix:     "leave platform empty for containerd hosts"}
		}
	}
	return resp.ImageRef != before, nil
}

// imageID is the image ID ref names on the node, "" when it has none.
func (d *ContainerdDaemon) imageID(ctx context.Context, ref string) (string, error) {
	resp, err := d.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		return "", err
	}
	if resp.Image == nil {
		return "", nil
	}
	return resp.Image.Id, nil
}

// verboseImageInfo is the "info" entry of a verbose ImageStatus answer, as
// containerd's CRI plugin writes it (1.6 and later).
type verboseImageInfo struct {
	ImageSpec struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	} `json:"imageSpec"`
}

// Inspect implements Daemon.
func (d *ContainerdDaemon) Inspect(ctx context.Context, ref string) (ImageInfo, error) {
	resp, err := d.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Verbose: true})
	if err != nil {
		return ImageInfo{}, err
	}
	if resp.Image == nil {
		return ImageInfo{}, fmt.Errorf("containerd has no image %s in namespace %s", ref, CRINamespace)
	}
	info := ImageInfo{ID: resp.Image.Id, RepoDigests: resp.Image.RepoDigests}
	var v verboseImageInfo
	if raw := resp.Info["info"]; raw != "" && json.Unmarshal([]byte(raw), &v) == nil && v.ImageSpec.OS != "" {
		info.Platform = strings.TrimRight(v.ImageSpec.OS+"/"+v.ImageSpec.Architecture+"/"+v.ImageSpec.Variant, "/")
	}
	return info, nil
}

// samePlatform compares a platform asked for with one reported; arm64's
// variant v8 is its default and may be left out on either side.
func samePlatform(want ocispec.Platform, got string) bool {
	g, err := ParsePlatform(got)
	if err != nil {
		return false
	}
	norm := func(p ocispec.Platform) string {
		if p.Architecture == "arm64" && p.Variant == "v8" {
			p.Variant = ""
		}
		return p.OS + "/" + p.Architecture + "/" + p.Variant
	}
	if want.Variant == "" {
		g.Variant = ""
	}
	return norm(want) == norm(g)
}

// classifyCRI places an error of a CRI call. containerd maps its error
// kinds onto gRPC codes (errdefs.ToGRPC), but registry answers reach it as
// text ("failed to fetch oauth token: unexpected status: 403 Forbidden",
// "pull access denied, repository does not exist or may require
// authorization"), so the code gives a status and failure.FromDaemon
// reads both.
func classifyCRI(ctx context.Context, err error, creds ghcr.Credentials) error {
	anonymous := creds.IsAnonymous()
	if ctx.Err() != nil {
		return ghcr.Classify(ctx.Err(), anonymous)
	}
	st, ok := status.FromError(err)
	if !ok {
		return ghcr.Classify(err, anonymous)
	}
	httpStatus := 0
	switch st.Code() {
	case codes.Unauthenticated:
		httpStatus = http.StatusUnauthorized
	case codes.PermissionDenied:
		httpStatus = http.StatusForbidden
	case codes.NotFound:
		httpStatus = http.StatusNotFound
	case codes.ResourceExhausted:
		httpStatus = http.StatusTooManyRequests
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		// The channel to containerd broke, or containerd gave up on the
		// registry: worth another try either way.
		return &failure.Transient{Response: failure.Response{Where: "daemon", Message: failure.Clip(st.Message())}}
	case codes.Unimplemented:
		return ErrNoCRI
	case codes.InvalidArgument:
		return &failure.BadInput{Input: "image", Problem: "containerd refused the reference: " + st.Message()}
	}
	return failure.FromDaemon(httpStatus, st.Message(), anonymous)
}
