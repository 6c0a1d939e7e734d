package cri

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/registrytest"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fakeCRI is containerd's CRI service as far as ghcr-pull uses it: Version,
// PullImage (answers from a script, then success), ImageStatus and
// ListImages.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	mu       sync.Mutex
	answers  []error
	auths    []*runtimeapi.AuthConfig
	images   map[string]*runtimeapi.Image // by reference
	digest   string
	platform string // imageSpec os/architecture as JSON fields
	ov       *overlaps
}

func (f *fakeCRI) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "containerd", RuntimeVersion: "1.6.20~ds1", RuntimeApiVersion: "v1"}, nil
}

func (f *fakeCRI) PullImage(_ context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	defer f.ov.enter("pull")()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.auths = append(f.auths, r.Auth)
	if len(f.answers) > 0 {
		err := f.answers[0]
		f.answers = f.answers[1:]
		if err != nil {
			return nil, err
		}
	}
	ref := r.Image.Image
	repo := ref[:strings.LastIndex(ref, ":")]
	id := "sha256:" + strings.Repeat("c", 64)
	f.images[ref] = &runtimeapi.Image{Id: id, RepoTags: []string{ref}, RepoDigests: []string{repo + "@" + f.digest}}
	return &runtimeapi.PullImageResponse{ImageRef: id}, nil
}

func (f *fakeCRI) ListImages(context.Context, *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	defer f.ov.enter("list")()
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &runtimeapi.ListImagesResponse{}
	for _, img := range f.images {
		resp.Images = append(resp.Images, img)
	}
	return resp, nil
}

func (f *fakeCRI) ImageStatus(_ context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	defer f.ov.enter("status")()
	f.mu.Lock()
	defer f.mu.Unlock()
	img := f.images[r.Image.Image]
	if img == nil {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	resp := &runtimeapi.ImageStatusResponse{Image: img}
	if r.Verbose {
		// As containerd 1.6 writes it.
		resp.Info = map[string]string{"info": `{"chainID":"sha256:x","imageSpec":{` + f.platform + `,"rootfs":{"type":"layers"}}}`}
	}
	return resp, nil
}

// startFakeCRI serves f over an in-memory listener and returns a dialer.
func startFakeCRI(t *testing.T, f *fakeCRI, withRuntime bool) func(context.Context) (net.Conn, error) {
	t.Helper()
	if f.images == nil {
		f.images = map[string]*runtimeapi.Image{}
	}
	if f.platform == "" {
		f.platform = `"os":"linux","architecture":"amd64"`
	}
	l := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	runtimeapi.RegisterImageServiceServer(srv, f)
	if withRuntime {
		runtimeapi.RegisterRuntimeServiceServer(srv, f)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return func(ctx context.Context) (net.Conn, error) { return l.DialContext(ctx) }
}

func TestContainerdPullAndInspect(t *testing.T) {
	digest := "sha256:" + strings.Repeat("d", 64)
	f := &fakeCRI{digest: digest}
	d, err := New(context.Background(), startFakeCRI(t, f, true), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Version != "containerd 1.6.20~ds1" {
		t.Errorf("Version = %q", d.Version)
	}
	ref := "10.231.1.1:5000/acme/app:1"
	creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"}
	downloaded, err := d.Pull(context.Background(), ref, nil, creds, nil)
	if err != nil || !downloaded {
		t.Fatalf("first pull: downloaded=%v err=%v", downloaded, err)
	}
	downloaded, err = d.Pull(context.Background(), ref, nil, registryauth.Anonymous, nil)
	if err != nil || downloaded {
		t.Fatalf("second pull of the same image: downloaded=%v err=%v", downloaded, err)
	}
	// The same image under a name the node never held (a mirror's, by
	// digest): its ID is known, nothing new.
	downloaded, err = d.Pull(context.Background(), "mirror.example:5000/acme/app@"+digest, nil, registryauth.Anonymous, nil)
	if err != nil || downloaded {
		t.Fatalf("the same image under a mirror's name: downloaded=%v err=%v", downloaded, err)
	}
	if a := f.auths[0]; a == nil || a.Username != "u" || a.Password != "p" || a.ServerAddress != "" {
		t.Errorf("credentials sent as %+v", a)
	}
	if f.auths[1] != nil {
		t.Errorf("anonymous pull sent %+v", f.auths[1])
	}
	info, err := d.Inspect(context.Background(), ref)
	if err != nil || info.PlatformString() != "linux/amd64" || len(info.RepoDigests) != 1 || info.RepoDigests[0].Digest().String() != digest {
		t.Errorf("Inspect = %+v, %v", info, err)
	}
	if rt, ns := d.Runtime(); rt != "containerd" || ns != "k8s.io" {
		t.Errorf("Runtime = %s %s", rt, ns)
	}

	if _, err := d.Pull(context.Background(), ref, platform(t, "linux/arm64"), registryauth.Anonymous, nil); !isBadInput(err, "platform") {
		t.Errorf("a platform the node does not run: %v, want a platform input error", err)
	}
	if _, err := d.Pull(context.Background(), ref, platform(t, "linux/amd64"), registryauth.Anonymous, nil); err != nil {
		t.Errorf("the node's own platform: %v", err)
	}
}

// TestContainerdPullRoundTrips: a name by digest the node does not hold
// is looked up while the node's image IDs are listed, one round trip to the
// node before the pull, not two; a tag is only looked up.
func TestContainerdPullRoundTrips(t *testing.T) {
	digest := "sha256:" + strings.Repeat("d", 64)
	for _, tc := range []struct {
		ref       string
		wantCalls []string
		wantMet   []string
	}{
		{ref: "127.0.0.1:40123/acme/app@" + digest, wantCalls: []string{"status", "list", "pull"}, wantMet: []string{"list & status"}},
		{ref: "10.231.1.1:5000/acme/app:1", wantCalls: []string{"status", "pull"}},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			f := &fakeCRI{digest: digest, ov: newOverlaps()}
			d, err := New(context.Background(), startFakeCRI(t, f, true), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if downloaded, err := d.Pull(context.Background(), tc.ref, nil, registryauth.Anonymous, nil); err != nil || !downloaded {
				t.Fatalf("Pull = %v, %v", downloaded, err)
			}
			calls, met := f.ov.report()
			if !slices.Equal(slices.Sorted(slices.Values(calls)), slices.Sorted(slices.Values(tc.wantCalls))) || calls[len(calls)-1] != "pull" {
				t.Errorf("calls %q, want %q, pull last", calls, tc.wantCalls)
			}
			if !slices.Equal(met, tc.wantMet) {
				t.Errorf("made at once: %q, want %q", met, tc.wantMet)
			}
		})
	}
}

func platform(t *testing.T, s string) *ocispec.Platform {
	t.Helper()
	p, err := image.ParsePlatform(s)
	if err != nil {
		t.Fatal(err)
	}
	return &p
}

func isBadInput(err error, input string) bool {
	var bad *failure.BadInput
	return errors.As(err, &bad) && bad.Input == input
}

func TestContainerdWithoutCRI(t *testing.T) {
	_, err := New(context.Background(), startFakeCRI(t, &fakeCRI{}, false), nil)
	if !errors.Is(err, ErrNoCRI) || !strings.Contains(err.Error(), `disabled_plugins = ["cri"]`) {
		t.Fatalf("err = %v, want ErrNoCRI", err)
	}
}

// The strings are containerd 1.6.20's (Debian 12), as it answered the
// end-to-end registry; the Unavailable one is gRPC's own.
func TestClassifyCRI(t *testing.T) {
	token := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"}
	tests := []struct {
		err   error
		creds registryauth.Credentials
		want  string
	}{
		{status.Error(codes.Unknown, `failed to pull and unpack image "10.231.1.1:41293/acme/zz-private:1": failed to resolve reference "10.231.1.1:41293/acme/zz-private:1": failed to authorize: failed to fetch oauth token: unexpected status: 403 Forbidden`), token, "rejected"},
		{status.Error(codes.Unknown, `failed to pull and unpack image "10.231.1.1:41293/acme/zz-private:1": failed to resolve reference "10.231.1.1:41293/acme/zz-private:1": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed`), registryauth.Anonymous, "anonymous-denied"},
		{status.Error(codes.NotFound, `failed to pull and unpack image "10.231.1.1:41293/acme/zz-public:nope": failed to resolve reference "10.231.1.1:41293/acme/zz-public:nope": 10.231.1.1:41293/acme/zz-public:nope: not found`), token, "not-found"},
		{status.Error(codes.NotFound, `failed to pull and unpack image "10.231.1.1:46801/acme/zz-public2:arm": no match for platform in manifest: not found`), token, "bad-input:platform"},
		{status.Error(codes.Unknown, `failed to pull and unpack image "10.231.1.1:41293/acme/zz-public2:1": failed to copy: httpReadSeeker: failed open: unexpected status code http://10.231.1.1:41293/v2/acme/zz-public2/blobs/sha256:52579b29386b2dfe2f2cef3a34ce2f1c7e5dceb4988248d5d61c9b99e056f19d: 503 Service Unavailable - Server message: unavailable: Service Unavailable`), token, "transient"},
		{status.Error(codes.Unknown, `failed to pull and unpack image "10.231.1.1:41293/acme/zz-public2:1": failed to resolve reference "10.231.1.1:41293/acme/zz-public2:1": pulling from host 10.231.1.1:41293 failed with status code [manifests 1]: 429 Too Many Requests`), token, "transient"},
		{status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: ssh: rejected: connect failed (open failed)\""), token, "transient"},
		{status.Error(codes.Unimplemented, "unknown service runtime.v1.ImageService"), token, "nocri"},
		{status.Error(codes.InvalidArgument, `failed to parse "x::1"`), token, "bad-input:image"},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			got := classifyCRI(context.Background(), tt.err, tt.creds)
			if c := criClass(got); c != tt.want {
				t.Errorf("class = %s, want %s (%v)", c, tt.want, got)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if c := criClass(classifyCRI(ctx, status.Error(codes.DeadlineExceeded, "x"), token)); c != "transient" {
		t.Errorf("the step's deadline: %s", c)
	}
}

func criClass(err error) string {
	if errors.Is(err, ErrNoCRI) {
		return "nocri"
	}
	return failure.ClassOf(err)
}

// A containerd host goes through Run like any target: rejected by
// containerd, the pull falls back to anonymous there, and the result says
// where the image went.
func TestRunContainerdFallback(t *testing.T) {
	ref, digest := registrytest.Open(t)
	images, err := pull.ParseImages([]string{ref})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeCRI{digest: digest, answers: []error{status.Error(codes.Unknown,
		`failed to pull and unpack image "`+ref+`": failed to resolve reference "`+ref+`": failed to authorize: failed to fetch oauth token: unexpected status: 403 Forbidden`)}}
	dial := startFakeCRI(t, f, true)
	targets := []pull.Target{{Name: "node", Open: func(ctx context.Context) (pull.Daemon, error) { return New(ctx, dial, nil) }}}
	res := pull.Run(context.Background(), images, targets, pull.Options{
		Credentials: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "p"}, Fallback: true,
		Retry: retry.Policy{Retries: 1, Base: time.Millisecond, Max: time.Millisecond},
	})
	r := res[0]
	if r.Err != nil || r.AuthMode != registryauth.ModeAnonymous || !r.FallbackUsed || !strings.Contains(r.CredentialError, "403 Forbidden") {
		t.Fatalf("result %+v", r)
	}
	if r.Runtime != "containerd" || r.Namespace != "k8s.io" || r.Digest != digest || r.Platform != "linux/amd64" || !r.Pulled {
		t.Errorf("result %+v", r)
	}
	if len(f.auths) != 2 || f.auths[0] == nil || f.auths[1] != nil {
		t.Errorf("auth configs sent: %v", f.auths)
	}
}
