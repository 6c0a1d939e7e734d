package cri

import (
	"context"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeContainerd is containerd's metadata store of image records, served
// by its images service, and the CRI plugin's view of it, which (as in
// containerd) learns of a record only some calls later, from an event.
type fakeContainerd struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	imagesapi.UnimplementedImagesServer

	mu        sync.Mutex
	records   map[string]*imagesapi.Image // by name, in k8s.io
	ids       map[string]string           // target digest → image ID (config digest)
	lag       int                         // CRI answers a new name after this many ImageStatus calls
	fresh     map[string]int              // names changed: ImageStatus calls since
	calls     []string
	deleteErr error // Delete's answer, if any
	ov        *overlaps
}

func (f *fakeContainerd) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "containerd", RuntimeVersion: "1.6.20~ds1", RuntimeApiVersion: "v1"}, nil
}

// namespace is what containerd requires of every images call.
func namespace(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if ns := md.Get("containerd-namespace"); len(ns) != 1 || ns[0] != "k8s.io" {
		return status.Errorf(codes.FailedPrecondition, "namespace is required (got %q)", ns)
	}
	return nil
}

func (f *fakeContainerd) Get(ctx context.Context, r *imagesapi.GetImageRequest) (*imagesapi.GetImageResponse, error) {
	defer f.ov.enter("get")()
	if err := namespace(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.records[r.Name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", r.Name)
	}
	return &imagesapi.GetImageResponse{Image: img}, nil
}

func (f *fakeContainerd) Create(ctx context.Context, r *imagesapi.CreateImageRequest) (*imagesapi.CreateImageResponse, error) {
	defer f.ov.enter("create " + r.Image.Name)()
	if err := namespace(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "create "+r.Image.Name)
	if _, ok := f.records[r.Image.Name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "image %q: already exists", r.Image.Name)
	}
	f.records[r.Image.Name] = r.Image
	f.fresh[r.Image.Name] = 0
	return &imagesapi.CreateImageResponse{Image: r.Image}, nil
}

func (f *fakeContainerd) Update(ctx context.Context, r *imagesapi.UpdateImageRequest) (*imagesapi.UpdateImageResponse, error) {
	if err := namespace(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "update "+r.Image.Name)
	if _, ok := f.records[r.Image.Name]; !ok {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", r.Image.Name)
	}
	f.records[r.Image.Name] = r.Image
	f.fresh[r.Image.Name] = 0
	return &imagesapi.UpdateImageResponse{Image: r.Image}, nil
}

func (f *fakeContainerd) Delete(ctx context.Context, r *imagesapi.DeleteImageRequest) (*emptypb.Empty, error) {
	defer f.ov.enter("delete")()
	if err := namespace(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete "+r.Name)
	if f.deleteErr != nil {
		return nil, f.deleteErr
	}
	if _, ok := f.records[r.Name]; !ok {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", r.Name)
	}
	delete(f.records, r.Name)
	return &emptypb.Empty{}, nil
}

func (f *fakeContainerd) ImageStatus(_ context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	defer f.ov.enter("status " + r.Image.Image)()
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.records[r.Image.Image]
	if !ok {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	if n, ok := f.fresh[r.Image.Image]; ok && n < f.lag {
		f.fresh[r.Image.Image]++
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: f.ids[img.Target.Digest]}}, nil
}

func (f *fakeContainerd) ListImages(context.Context, *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*runtimeapi.Image
	for _, id := range slices.Sorted(maps.Values(f.ids)) {
		out = append(out, &runtimeapi.Image{Id: id})
	}
	return &runtimeapi.ListImagesResponse{Images: out}, nil
}

// name is Name of the image that ref names, looked up.
func name(ctx context.Context, d *ImageService, ref, name string) error {
	img, err := d.Lookup(ctx, ref)
	if err != nil {
		return err
	}
	return d.Name(ctx, img, name)
}

// overlaps records the calls a fake answers and which of them were in
// flight at once: each call is held for hold, so calls made concurrently
// meet, and calls made one after the other do not.
type overlaps struct {
	hold time.Duration

	mu       sync.Mutex
	inflight map[string]int
	calls    []string
	met      map[string]bool // "a & b", a < b
}

func newOverlaps() *overlaps {
	return &overlaps{hold: 100 * time.Millisecond, inflight: map[string]int{}, met: map[string]bool{}}
}

// enter records call; the func returned ends it. A nil *overlaps records
// nothing.
func (o *overlaps) enter(call string) func() {
	if o == nil {
		return func() {}
	}
	o.mu.Lock()
	o.calls = append(o.calls, call)
	for other, n := range o.inflight {
		if n > 0 {
			o.met[min(call, other)+" & "+max(call, other)] = true
		}
	}
	o.inflight[call]++
	o.mu.Unlock()
	time.Sleep(o.hold)
	return func() {
		o.mu.Lock()
		o.inflight[call]--
		o.mu.Unlock()
	}
}

func (o *overlaps) report() (calls []string, met []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.calls), slices.Sorted(maps.Keys(o.met))
}

func (f *fakeContainerd) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.records))
}

func startFakeContainerd(t *testing.T, f *fakeContainerd) *ImageService {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	runtimeapi.RegisterImageServiceServer(srv, f)
	imagesapi.RegisterImagesServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	d, err := New(context.Background(), func(ctx context.Context) (net.Conn, error) { return l.DialContext(ctx) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

const (
	loopbackName = "127.0.0.1:40123/acme/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	pinnedName   = "ghcr.io/acme/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"
)

func newFakeContainerd() *fakeContainerd {
	target := &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: "sha256:" + strings.Repeat("1", 64), Size: 512}
	other := &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: "sha256:" + strings.Repeat("2", 64), Size: 512}
	return &fakeContainerd{
		records: map[string]*imagesapi.Image{
			loopbackName:         {Name: loopbackName, Target: target},
			"sha256:imageid":     {Name: "sha256:imageid", Target: target},
			"ghcr.io/acme/app:1": {Name: "ghcr.io/acme/app:1", Target: other},
		},
		ids:   map[string]string{target.Digest: "sha256:imageid", other.Digest: "sha256:otherid"},
		fresh: map[string]int{},
	}
}

func TestNames(t *testing.T) {
	ctx := context.Background()

	t.Run("Name: one more record, the source's target, CRI's label, returns once CRI reports it", func(t *testing.T) {
		f := newFakeContainerd()
		f.lag = 3
		d := startFakeContainerd(t, f)
		if err := name(ctx, d, loopbackName, pinnedName); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		got := f.records[pinnedName]
		seen := f.fresh[pinnedName]
		f.mu.Unlock()
		if got == nil || got.Target.Digest != "sha256:"+strings.Repeat("1", 64) || got.Target.Size != 512 || got.Labels["io.cri-containerd.image"] != "managed" {
			t.Fatalf("record %v", got)
		}
		if seen < f.lag {
			t.Errorf("Name returned before the CRI plugin reported the name (%d of %d calls)", seen, f.lag)
		}
	})

	t.Run("Give: the record at once, no wait; InspectAs inspects it once CRI reports it", func(t *testing.T) {
		f := newFakeContainerd()
		f.lag = 3
		d := startFakeContainerd(t, f)
		img, err := d.Lookup(ctx, loopbackName)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Give(ctx, img, pinnedName); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		got, seen := f.records[pinnedName], f.fresh[pinnedName]
		f.mu.Unlock()
		if got == nil || seen != 0 {
			t.Fatalf("record %v after %d CRI calls, want it given and CRI not asked", got, seen)
		}
		info, err := d.InspectAs(ctx, pinnedName, img.ID)
		if err != nil || info.ID != img.ID {
			t.Fatalf("InspectAs = %+v, %v; want %s", info, err, img.ID)
		}
		f.mu.Lock()
		seen = f.fresh[pinnedName]
		f.mu.Unlock()
		if seen < f.lag {
			t.Errorf("InspectAs returned before the CRI plugin reported the name (%d of %d calls)", seen, f.lag)
		}
	})

	t.Run("Name moves a name that named another image", func(t *testing.T) {
		f := newFakeContainerd()
		d := startFakeContainerd(t, f)
		if err := name(ctx, d, loopbackName, "ghcr.io/acme/app:1"); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		got := f.records["ghcr.io/acme/app:1"].Target.Digest
		calls := slices.Clone(f.calls)
		f.mu.Unlock()
		if got != "sha256:"+strings.Repeat("1", 64) {
			t.Errorf("the tag targets %s (calls %q)", got, calls)
		}
	})

	t.Run("Name: the CRI plugin never reports it", func(t *testing.T) {
		f := newFakeContainerd()
		f.lag = 1 << 30
		d := startFakeContainerd(t, f)
		defer func(w time.Duration) { nameWait = w }(nameWait)
		nameWait = 200 * time.Millisecond
		err := name(ctx, d, loopbackName, pinnedName)
		if err == nil || !strings.Contains(err.Error(), "did not report") || !strings.Contains(err.Error(), pinnedName) {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("Name of a source that is not there", func(t *testing.T) {
		d := startFakeContainerd(t, newFakeContainerd())
		if err := name(ctx, d, "ghcr.io/acme/none@sha256:"+strings.Repeat("9", 64), pinnedName); status.Code(err) != codes.NotFound {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("Unname deletes that name only; a missing name is no error", func(t *testing.T) {
		f := newFakeContainerd()
		d := startFakeContainerd(t, f)
		if err := name(ctx, d, loopbackName, pinnedName); err != nil {
			t.Fatal(err)
		}
		if err := d.Unname(ctx, loopbackName); err != nil {
			t.Fatal(err)
		}
		if err := d.Unname(ctx, loopbackName); err != nil {
			t.Errorf("again: %v", err)
		}
		want := []string{"ghcr.io/acme/app:1", pinnedName, "sha256:imageid"}
		if got := f.names(); !slices.Equal(got, want) {
			t.Errorf("names %q, want %q", got, want)
		}
	})

	t.Run("Rename: the user's names, spelled as CRI does, in place of the pulled one, which goes even when naming fails", func(t *testing.T) {
		f := newFakeContainerd()
		d := startFakeContainerd(t, f)
		if err := d.Rename(ctx, loopbackName, pinnedName, "ghcr.io/acme/app"); err != nil {
			t.Fatal(err)
		}
		want := []string{"ghcr.io/acme/app:latest", "ghcr.io/acme/app:1", pinnedName, "sha256:imageid"}
		slices.Sort(want)
		if got := f.names(); !slices.Equal(got, want) {
			t.Errorf("names %q, want %q", got, want)
		}
		// A name among the names asked for stays.
		f = newFakeContainerd()
		d = startFakeContainerd(t, f)
		if err := d.Rename(ctx, loopbackName, loopbackName, pinnedName); err != nil {
			t.Fatal(err)
		}
		if got := f.names(); !slices.Contains(got, loopbackName) || !slices.Contains(got, pinnedName) {
			t.Errorf("names %q, want %s kept and %s added", got, loopbackName, pinnedName)
		}
		f = newFakeContainerd()
		d = startFakeContainerd(t, f)
		if err := d.Rename(ctx, loopbackName, "NOT A NAME"); err == nil {
			t.Error("a bad name was given")
		}
		if slices.Contains(f.names(), loopbackName) {
			t.Errorf("the pulled name stayed: %q", f.names())
		}
	})

	t.Run("ImageIDs", func(t *testing.T) {
		d := startFakeContainerd(t, newFakeContainerd())
		ids, err := d.ImageIDs(ctx)
		if err != nil || len(ids) != 2 || !ids["sha256:imageid"] || !ids["sha256:otherid"] {
			t.Errorf("ImageIDs = %v, %v", ids, err)
		}
	})
}

// TestNamesRoundTrips: each round trip to a host costs its network's
// latency, so calls that do not depend on each other are made at once.
func TestNamesRoundTrips(t *testing.T) {
	ctx := context.Background()
	tag := "ghcr.io/acme/app:1"
	for _, tc := range []struct {
		name      string
		deleteErr error
		run       func(d *ImageService) error
		wantErr   string
		wantCalls []string // sorted
		wantMet   []string // pairs in flight at once
		apart     []string // pairs never in flight at once
		wantNames []string
	}{
		{
			name:      "Lookup asks the images service and CRI at once",
			run:       func(d *ImageService) error { _, err := d.Lookup(ctx, loopbackName); return err },
			wantCalls: []string{"get", "status " + loopbackName},
			wantMet:   []string{"get & status " + loopbackName},
		},
		{
			name: "Rename looks up once, then gives every name and removes the pulled one at once",
			run: func(d *ImageService) error {
				_, err := Rename(ctx, d, loopbackName, pinnedName, tag)
				return err
			},
			wantCalls: []string{"create " + tag, "create " + pinnedName, "delete", "get", "status " + tag, "status " + loopbackName, "status " + pinnedName},
			wantMet:   []string{"create " + pinnedName + " & delete", "create " + tag + " & create " + pinnedName, "get & status " + loopbackName},
			apart:     []string{"delete & get", "delete & status " + loopbackName},
			wantNames: []string{tag, pinnedName, "sha256:imageid"},
		},
		{
			name:      "Rename: removing the pulled name fails beside naming: the error is returned, the names given",
			deleteErr: status.Error(codes.Unavailable, "metadata store locked"),
			run: func(d *ImageService) error {
				_, err := Rename(ctx, d, loopbackName, pinnedName)
				return err
			},
			wantErr:   "metadata store locked",
			wantCalls: []string{"create " + pinnedName, "delete", "get", "status " + loopbackName, "status " + pinnedName},
			wantMet:   []string{"create " + pinnedName + " & delete", "get & status " + loopbackName},
			wantNames: []string{tag, loopbackName, pinnedName, "sha256:imageid"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeContainerd()
			f.ov, f.deleteErr = newOverlaps(), tc.deleteErr
			d := startFakeContainerd(t, f)
			err := tc.run(d)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			calls, met := f.ov.report()
			slices.Sort(calls)
			if !slices.Equal(calls, slices.Sorted(slices.Values(tc.wantCalls))) {
				t.Errorf("calls %q, want %q", calls, tc.wantCalls)
			}
			for _, pair := range tc.wantMet {
				if !slices.Contains(met, pair) {
					t.Errorf("%s were not made at once (met: %q)", pair, met)
				}
			}
			for _, pair := range tc.apart {
				if slices.Contains(met, pair) {
					t.Errorf("%s were made at once: the pulled name may go before it is read", pair)
				}
			}
			if tc.wantNames != nil {
				want := slices.Sorted(slices.Values(tc.wantNames))
				if got := f.names(); !slices.Equal(got, want) {
					t.Errorf("names %q, want %q", got, want)
				}
			}
		})
	}
}
