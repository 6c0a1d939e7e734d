// Package cri is ghcr-pull's adapter to containerd's CRI image service,
// the API the kubelet itself uses: PullImage with the credentials in the
// request's AuthConfig. The pull runs inside containerd on the node (layers
// go from the registry straight to the node), is unpacked for the
// snapshotter the CRI plugin is configured with (so a pod starts from it
// without pulling again), and the credentials live only in that one
// request: nothing is written on the node. It takes a dialer to
// containerd's socket and knows nothing of SSH or of the pull policy. Why
// CRI and not the containerd client: docs/containerd.md.
package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// DefaultSocket is where containerd listens unless told otherwise; k3s
// uses /run/k3s/containerd/containerd.sock.
const DefaultSocket = "/run/containerd/containerd.sock"

// Namespace is the containerd namespace of every image pulled through the
// CRI image service. containerd's CRI plugin sets it on each call,
// whatever namespace the caller names, and it is the one the kubelet reads.
const Namespace = "k8s.io"

// ImageService is containerd's CRI image service, reached over any
// connection to its socket. It satisfies pull.Daemon.
type ImageService struct {
	cc     *grpc.ClientConn
	conn   io.Closer // what New's connections travel in, if anything
	images runtimeapi.ImageServiceClient
	names  imagesapi.ImagesClient // containerd's own images service (names.go)
	// Version is what the runtime says of itself, e.g. "containerd 1.6.20~ds1".
	Version string
}

// ErrNoCRI says containerd answers but serves no CRI v1 image service.
var ErrNoCRI = errors.New("containerd answers, but serves no CRI v1 API: its CRI plugin is disabled " +
	`(disabled_plugins = ["cri"] in /etc/containerd/config.toml, as the containerd.io package installed with Docker ships it) ` +
	"or it is older than 1.6; enable the plugin and restart containerd, or pull through Docker (remote-runtime: docker)")

// New connects to containerd's CRI services through dial (called
// for each connection gRPC opens) and checks that they answer. conn, when
// not nil, is what those connections travel in (an SSH connection): the
// ImageService owns it, and Close closes it after the gRPC connection.
func New(ctx context.Context, dial func(ctx context.Context) (net.Conn, error), conn io.Closer) (*ImageService, error) {
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
	return &ImageService{
		cc:      cc,
		conn:    conn,
		images:  runtimeapi.NewImageServiceClient(cc),
		names:   imagesapi.NewImagesClient(cc),
		Version: strings.TrimSpace(v.RuntimeName + " " + v.RuntimeVersion),
	}, nil
}

// Close ends the gRPC connection, then what it travels in.
func (d *ImageService) Close() error {
	err := d.cc.Close()
	if d.conn != nil {
		err = errors.Join(err, d.conn.Close())
	}
	return err
}

// Runtime names the runtime and the namespace images land in.
func (d *ImageService) Runtime() (name, namespace string) { return "containerd", Namespace }

// Pull pulls ref with creds in the request, as the kubelet sends an
// imagePullSecret, and reports whether the node got an image it lacked.
// CRI reports no progress, and it pulls the node's own platform
// (PullImageRequest has no platform): a platform asked for that the node
// does not run is an error after the fact.
func (d *ImageService) Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, _ func(done, total int64)) (bool, error) {
	// A name by digest the node does not hold (a mirror's
	// <mirror>/<repo>@<digest>, the relay's loopback) says nothing of the
	// content: the image ID among those it lists does. They are listed
	// while the name is looked up: one round trip to the node, not two.
	var (
		ids    map[string]bool
		idsErr error
		listed = make(chan struct{})
	)
	byDigest := strings.Contains(ref, "@")
	if byDigest {
		go func() {
			defer close(listed)
			ids, idsErr = d.ImageIDs(ctx)
		}()
	} else {
		close(listed)
	}
	before, err := d.imageID(ctx, ref)
	<-listed
	if err != nil {
		return false, classifyCRI(ctx, err, creds)
	}
	had := map[string]bool{before: true}
	if before == "" && byDigest {
		if idsErr != nil {
			return false, classifyCRI(ctx, idsErr, creds)
		}
		had = ids
	}
	id, err := d.Fetch(ctx, ref, platform, creds)
	if err != nil {
		return false, err
	}
	return !had[id], nil
}

// Fetch is Pull without asking the node first what it holds: CRI's pull
// alone, returning the ID of the image ref names. For a caller that
// knows otherwise whether the image is new to the node (the relay, which
// served it), one round trip less.
func (d *ImageService) Fetch(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials) (string, error) {
	req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}
	if !creds.IsAnonymous() {
		// As the kubelet sends an imagePullSecret: containerd uses it for
		// this pull's token requests and keeps it nowhere.
		req.Auth = &runtimeapi.AuthConfig{Username: creds.Username, Password: creds.Password}
	}
	resp, err := d.images.PullImage(ctx, req)
	if err != nil {
		return "", classifyCRI(ctx, err, creds)
	}
	if platform != nil {
		info, err := d.Inspect(ctx, ref)
		if err != nil {
			return "", classifyCRI(ctx, err, creds)
		}
		if info.Platform == nil || !image.SamePlatform(*platform, *info.Platform) {
			return "", failure.Bad("platform",
				fmt.Sprintf("containerd pulls the node's own platform through CRI (the kubelet's API has no platform field): it pulled %s, not %s", info.PlatformString(), image.FormatPlatform(*platform)),
				"leave platform empty for containerd hosts")
		}
	}
	return resp.ImageRef, nil
}

// imageID is the image ID ref names on the node, "" when it has none.
func (d *ImageService) imageID(ctx context.Context, ref string) (string, error) {
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

// Inspect describes an image on the node.
func (d *ImageService) Inspect(ctx context.Context, ref string) (image.Info, error) {
	resp, err := d.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Verbose: true})
	if err != nil {
		return image.Info{}, err
	}
	if resp.Image == nil {
		return image.Info{}, fmt.Errorf("containerd has no image %s in namespace %s", ref, Namespace)
	}
	info := image.Info{ID: resp.Image.Id, RepoDigests: image.ParseRepoDigests(resp.Image.RepoDigests)}
	var v verboseImageInfo
	if raw := resp.Info["info"]; raw != "" && json.Unmarshal([]byte(raw), &v) == nil && v.ImageSpec.OS != "" {
		info.Platform = image.PlatformOf(v.ImageSpec.OS, v.ImageSpec.Architecture, v.ImageSpec.Variant)
	}
	return info, nil
}

// classifyCRI places an error of a CRI call: the step's own deadline and
// errors that are no gRPC status as any network error, a CRI service that
// is not there as ErrNoCRI, and the rest by failure.FromGRPC, the one
// gRPC-code mapping (kube's kubelet errors go through it too).
func classifyCRI(ctx context.Context, err error, creds registryauth.Credentials) error {
	anonymous := creds.IsAnonymous()
	if ctx.Err() != nil {
		return failure.FromNetwork(ctx.Err())
	}
	st, ok := status.FromError(err)
	if !ok {
		return failure.FromNetwork(err)
	}
	if st.Code() == codes.Unimplemented {
		return ErrNoCRI
	}
	return failure.FromGRPC(st.Code().String(), st.Message(), anonymous)
}
