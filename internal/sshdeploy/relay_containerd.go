package sshdeploy

import (
	"context"
	"errors"
	"fmt"
	"sync"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/cri"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// criImages is what the relayed route needs of containerd
// (*cri.ImageService): CRI to pull and inspect, containerd's images
// service to add and remove single names in the k8s.io namespace.
type criImages interface {
	Fetch(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials) (string, error)
	Inspect(ctx context.Context, ref string) (image.Info, error)
	InspectAs(ctx context.Context, ref, id string) (image.Info, error)
	Give(ctx context.Context, img cri.Image, name string) error
	cri.Namer
	Runtime() (name, namespace string)
	Close() error
}

// giving names as cri.Namer does, without waiting for the CRI plugin to
// report each name (Give, not Name): pull inspects the image next, and
// Inspect makes that wait (InspectAs), the round trips in one.
type giving struct{ criImages }

func (g giving) Name(ctx context.Context, img cri.Image, name string) error {
	return g.Give(ctx, img, name)
}

// relayedContainerd is a containerd host that pulls from the relay:
// Pull(repo@digest) has the relay allow the digest, then the CRI image
// service pulls 127.0.0.1:<port>/<path>@<digest> (containerd's CRI
// resolver speaks plain HTTP to localhost with no configuration) with no
// auth, the image is named <repository>@<digest> in k8s.io, and the
// loopback name is deleted.
//
// Unlike Docker's store, containerd holds <repository>@<digest> names of
// its own: after the pull the image has the names a direct CRI pull
// leaves (its ID record, repository@digest and, through Tag, the user's
// tag), so the kubelet finds it by the user's reference and image_ref is
// the pinned reference, as for a direct pull.
type relayedContainerd struct {
	rt   criImages
	fwd  *forward
	once pullOnce

	mu      sync.Mutex
	relayed map[string]relayedName // by the ref pulled (one spelling)
	given   map[string]string      // image IDs by the names given, spelled as CRI does
}

// relayedName is a relayed image's name in k8s.io and the image it names
// (repository@digest names it for good), so Tag names it again without
// looking it up.
type relayedName struct {
	name string
	img  cri.Image
}

func newRelayedContainerd(rt criImages, fwd *forward) *relayedContainerd {
	return &relayedContainerd{rt: rt, fwd: fwd, relayed: map[string]relayedName{}, given: map[string]string{}}
}

func (d *relayedContainerd) Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	return d.once.pull(refKey(ref), func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		_, ok := d.relayed[refKey(ref)]
		return ok
	}, func() (bool, error) { return d.pullRelayed(ctx, ref, platform, creds, progress) })
}

func (d *relayedContainerd) pullRelayed(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error) {
	pinned, err := cri.CanonicalName(ref)
	if err != nil {
		return false, err
	}
	local, _, config, err := d.fwd.pull(ctx, ref, creds, func(loopback string) (string, error) {
		return d.rt.Fetch(ctx, loopback, platform, registryauth.Anonymous)
	})
	isNew := config != "" // the ID is CRI's (Lookup, in Rename)
	if err != nil {
		if local != "" {
			// Even when the step is cancelled: nothing of ours stays.
			_, rerr := cri.Rename(ctx, d.rt, local)
			err = errors.Join(err, rerr)
		}
		return false, err
	}
	// The loopback name goes whatever happens (removed while the name is
	// given); the image stays held by its ID record (the CRI plugin's)
	// and the name given.
	img, err := cri.Rename(ctx, giving{d.rt}, local, pinned)
	if err != nil {
		return false, fmt.Errorf("pulled %s from the relay, but: %w", local, err)
	}
	d.mu.Lock()
	d.relayed[refKey(ref)] = relayedName{name: pinned, img: img}
	d.given[pinned] = img.ID
	d.mu.Unlock()
	return isNew, nil
}

// Tag gives a relayed image the user's tag (moving it if it named another
// image), as a direct CRI pull of that tag would; it returns once
// containerd holds the name (Inspect waits for the CRI plugin).
func (d *relayedContainerd) Tag(ctx context.Context, source, target string) error {
	d.mu.Lock()
	held, ok := d.relayed[refKey(source)]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("{Transfer}: relay names only images it relayed, not %s", source)
	}
	tag, err := cri.CanonicalName(target)
	if err != nil {
		return err
	}
	if err := d.rt.Give(ctx, held.img, tag); err != nil {
		return err
	}
	d.mu.Lock()
	d.given[tag] = held.img.ID
	d.mu.Unlock()
	return nil
}

// Rename gives a relayed image, pulled as from (a mirror's
// <mirror>/<repo>@<digest>), names in place of the one Pull gave it, as a
// direct containerd host's pull from a mirror gets (cri.Rename).
func (d *relayedContainerd) Rename(ctx context.Context, from string, names ...string) error {
	d.mu.Lock()
	held, ok := d.relayed[refKey(from)]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("{Transfer}: relay names only images it relayed, not %s", from)
	}
	_, err := cri.Rename(ctx, d.rt, held.name, names...)
	return err
}

// Inspect describes ref as the CRI image service (the kubelet's view)
// reports it. A name Pull or Tag gave is inspected once the CRI plugin
// reports it as the image given (InspectAs): they return as soon as
// containerd holds the name, and this is the wait.
func (d *relayedContainerd) Inspect(ctx context.Context, ref string) (image.Info, error) {
	if c, err := cri.CanonicalName(ref); err == nil {
		d.mu.Lock()
		id, ok := d.given[c]
		d.mu.Unlock()
		if ok {
			return d.rt.InspectAs(ctx, ref, id)
		}
	}
	return d.rt.Inspect(ctx, ref)
}

func (d *relayedContainerd) Runtime() (name, namespace string) { return d.rt.Runtime() }

// Close closes the forward and the connection to containerd (and with it
// the SSH connection).
func (d *relayedContainerd) Close() error {
	return d.fwd.closeWith(d.rt.Close)
}
