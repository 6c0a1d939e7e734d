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
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/distribution/reference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
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

// Name gives the image that ref names (a name in containerd's k8s.io
// namespace, as CRI lists it) one more name, moving name if it named
// another image, and returns once the CRI image service reports name as
// that image: the kubelet looks images up there.
func (d *ImageService) Name(ctx context.Context, ref, name string) error {
	src, err := d.names.Get(inNamespace(ctx), &imagesapi.GetImageRequest{Name: ref})
	if err != nil {
		return fmt.Errorf("containerd's images service: %s: %w", ref, err)
	}
	id, err := d.imageID(ctx, ref)
	if err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("containerd has %s, but its CRI plugin does not list it", ref)
	}
	img := &imagesapi.Image{Name: name, Labels: criManaged, Target: src.Image.Target}
	_, err = d.names.Create(inNamespace(ctx), &imagesapi.CreateImageRequest{Image: img})
	if status.Code(err) == codes.AlreadyExists {
		// No field mask: the whole record (target and labels) is replaced.
		_, err = d.names.Update(inNamespace(ctx), &imagesapi.UpdateImageRequest{Image: img})
	}
	if err != nil {
		return fmt.Errorf("containerd's images service: naming %s %s: %w", ref, name, err)
	}
	wait, cancel := context.WithTimeout(ctx, nameWait)
	defer cancel()
	for {
		got, err := d.imageID(wait, name)
		if err == nil && got == id {
			return nil
		}
		select {
		case <-wait.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("containerd holds the name %s, but its CRI plugin did not report it within %s (last: %q, %v)", name, nameWait, got, err)
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
	Name(ctx context.Context, ref, name string) error
	Unname(ctx context.Context, name string) error
}

// Rename gives the image that from names (pulled by digest under a name
// that is not the user's: the relay's loopback, a mirror's) each of names,
// spelled as the CRI plugin spells them, and then removes the name from,
// also when naming failed or ctx ended: that name never stays on the node.
// The image stays, held by its ID record and the names given. With no
// names, Rename only removes from.
func Rename(ctx context.Context, n Namer, from string, names ...string) (err error) {
	keep := false // from is one of names: it stays
	defer func() {
		if keep {
			return
		}
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if uerr := n.Unname(cleanup, from); uerr != nil {
			err = errors.Join(err, uerr)
		}
	}()
	for _, name := range names {
		canon, err := CanonicalName(name)
		if err != nil {
			return err
		}
		if canon == from {
			keep = true
			continue
		}
		if err := n.Name(ctx, from, canon); err != nil {
			return err
		}
	}
	return nil
}

// Rename is Rename on this image service.
func (d *ImageService) Rename(ctx context.Context, from string, names ...string) error {
	return Rename(ctx, d, from, names...)
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
