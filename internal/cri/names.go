package cri

// Image names through containerd's images service, beside CRI on the same
// socket. CRI has no tag call, and its RemoveImage removes an image with
// every name it has; containerd's images service (the metadata store the
// CRI plugin itself writes) creates and deletes one name at a time. An
// image pulled by digest under a name that is not the user's (the relay's
// loopback, ssh-transfer: relay; a mirror's, docs/mirrors.md) is given the
// user's names and loses that one through Rename.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/distribution/reference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/image"
)

// namespaceHeader is how a gRPC call to containerd names its namespace
// (containerd's namespaces.GRPCHeader).
const namespaceHeader = "containerd-namespace"

// criManaged is the label the CRI plugin puts on the image records it
// manages (pkg/cri: imageLabelKey, imageLabelValue). On a record without
// it, the plugin's event handler creates the image ID record first and
// then labels the name; with it, the handler only updates its cache.
var criManaged = map[string]string{"io.cri-containerd.image": "managed"}

// nameWait bounds how long Name waits for the CRI plugin to report a new
// name: it learns of image records from containerd's events, after the
// images service has answered.
var nameWait = 30 * time.Second

func inNamespace(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, namespaceHeader, Namespace)
}

// Image is an image in k8s.io as Lookup found it: the target its names
// point at and the image ID the CRI plugin lists it by, all Name needs to
// give it more names without asking containerd again. A name by digest
// (repository@digest) names the same image for good.
type Image struct {
	Target *types.Descriptor
	ID     string
}

// Lookup finds the image that ref names (a name in containerd's k8s.io
// namespace, as CRI lists it). The images service's record and the CRI
// plugin's ID are asked at once: one round trip to the host, not two.
func (d *ImageService) Lookup(ctx context.Context, ref string) (Image, error) {
	var (
		src    *imagesapi.GetImageResponse
		getErr error
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		src, getErr = d.names.Get(inNamespace(ctx), &imagesapi.GetImageRequest{Name: ref})
	}()
	id, err := d.imageID(ctx, ref)
	<-done
	if getErr != nil {
		return Image{}, fmt.Errorf("containerd's images service: %s: %w", ref, getErr)
	}
	if err != nil {
		return Image{}, err
	}
	if id == "" {
		return Image{}, fmt.Errorf("containerd has %s, but its CRI plugin does not list it", ref)
	}
	return Image{Target: src.Image.Target, ID: id}, nil
}

// Name gives img one more name, moving name if it named another image,
// and returns once the CRI image service reports name as img: the kubelet
// looks images up there.
func (d *ImageService) Name(ctx context.Context, img Image, name string) error {
	if err := d.Give(ctx, img, name); err != nil {
		return err
	}
	_, err := d.untilReported(ctx, name, img.ID, func(ctx context.Context) (string, error) { return d.imageID(ctx, name) })
	return err
}

// Give is Name without the wait: it returns once containerd's images
// service holds the name, which the CRI plugin reports a moment later
// (it learns of it from containerd's events). InspectAs waits for that.
func (d *ImageService) Give(ctx context.Context, img Image, name string) error {
	rec := &imagesapi.Image{Name: name, Labels: criManaged, Target: img.Target}
	_, err := d.names.Create(inNamespace(ctx), &imagesapi.CreateImageRequest{Image: rec})
	if status.Code(err) == codes.AlreadyExists {
		// No field mask: the whole record (target and labels) is replaced.
		_, err = d.names.Update(inNamespace(ctx), &imagesapi.UpdateImageRequest{Image: rec})
	}
	if err != nil {
		return fmt.Errorf("containerd's images service: naming %s %s: %w", img.ID, name, err)
	}
	return nil
}

// InspectAs is Inspect of a name just given to image id (Give), once the
// CRI plugin reports it as that image: the wait Name makes, and the
// inspection, in one round trip when the plugin has caught up.
func (d *ImageService) InspectAs(ctx context.Context, ref, id string) (image.Info, error) {
	var info image.Info
	_, err := d.untilReported(ctx, ref, id, func(ctx context.Context) (string, error) {
		var err error
		info, err = d.Inspect(ctx, ref)
		return info.ID, err
	})
	return info, err
}

// untilReported asks look (the CRI plugin's answer for name) until it
// reports id, for up to nameWait.
func (d *ImageService) untilReported(ctx context.Context, name, id string, look func(context.Context) (string, error)) (string, error) {
	wait, cancel := context.WithTimeout(ctx, nameWait)
	defer cancel()
	for {
		got, err := look(wait)
		if err == nil && got == id {
			return got, nil
		}
		select {
		case <-wait.Done():
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", fmt.Errorf("containerd holds the name %s, but its CRI plugin did not report it within %s (last: %q, %v)", name, nameWait, got, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Unname deletes the name name; the image stays while another name (its
// image ID record, which the CRI plugin keeps, or a user's name) holds it.
// A name that is not there is no error.
func (d *ImageService) Unname(ctx context.Context, name string) error {
	_, err := d.names.Delete(inNamespace(ctx), &imagesapi.DeleteImageRequest{Name: name})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("containerd's images service: removing the name %s: %w", name, err)
	}
	return nil
}

// ImageIDs lists the image IDs the CRI plugin holds.
func (d *ImageService) ImageIDs(ctx context.Context) (map[string]bool, error) {
	resp, err := d.images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, img := range resp.Images {
		ids[img.Id] = true
	}
	return ids, nil
}

// Namer adds and removes single image names in k8s.io (*ImageService).
type Namer interface {
	Lookup(ctx context.Context, ref string) (Image, error)
	Name(ctx context.Context, img Image, name string) error
	Unname(ctx context.Context, name string) error
}

// Rename gives the image that from names (pulled by digest under a name
// that is not the user's: the relay's loopback, a mirror's) each of names,
// spelled as the CRI plugin spells them, and removes the name from, also
// when naming failed or ctx ended: that name never stays on the node, and
// an error removing it is returned with any other. The image stays, held
// by its ID record (which a CRI pull writes before it answers) and the
// names given, so once from is looked up, the names are given and from is
// removed all at once: one round trip to the host for all. With no names,
// Rename only removes from. It returns the image, for Name.
func Rename(ctx context.Context, n Namer, from string, names ...string) (Image, error) {
	var canon []string
	var bad error
	keep := false // from is one of names: it stays
	for _, name := range names {
		c, err := CanonicalName(name)
		switch {
		case err != nil:
			bad = errors.Join(bad, err)
		case c == from:
			keep = true
		default:
			canon = append(canon, c)
		}
	}
	if bad != nil {
		if keep {
			return Image{}, bad
		}
		return Image{}, errors.Join(bad, unname(ctx, n, from))
	}
	var img Image
	if len(canon) > 0 {
		var err error
		if img, err = n.Lookup(ctx, from); err != nil {
			if keep {
				return img, err
			}
			return img, errors.Join(err, unname(ctx, n, from))
		}
	}
	errs := make([]error, len(canon)+1)
	var wg sync.WaitGroup
	for i, name := range canon {
		wg.Go(func() { errs[i] = n.Name(ctx, img, name) })
	}
	if !keep {
		errs[len(canon)] = unname(ctx, n, from)
	}
	wg.Wait()
	return img, errors.Join(errs...)
}

// unname removes from even when ctx ended.
func unname(ctx context.Context, n Namer, from string) error {
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return n.Unname(cleanup, from)
}

// Rename is Rename on this image service.
func (d *ImageService) Rename(ctx context.Context, from string, names ...string) error {
	_, err := Rename(ctx, d, from, names...)
	return err
}

// CanonicalName is ref as containerd's CRI plugin names images:
// normalized (docker.io/library/busybox), a bare repository tagged latest.
func CanonicalName(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", err
	}
	return reference.TagNameOnly(named).String(), nil
}
