package imagefile

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is an image named in a layout's index.json: the reference the user
// wrote and the manifest (or index) it resolved to.
type Entry struct {
	Ref  string
	Desc v1.Descriptor
}

// layoutFile is the OCI layout's marker file, as go-containerregistry's
// layout package writes it.
const layoutFile = `{"imageLayoutVersion": "1.0.0"}`

// WriteIndex makes dir an OCI image layout whose index.json names exactly
// entries, each under its full reference in both annotations a layout
// written by Pull carries (crane's and containerd's). The relay's
// persistent store (cache-path) writes its index with it. oci-layout and
// index.json are each written beside and renamed into place, so a killed
// run leaves the previous index whole.
func WriteIndex(dir string, entries []Entry) error {
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o755); err != nil {
		return err
	}
	if !isLayout(dir) {
		if err := writeFileAtomic(filepath.Join(dir, "oci-layout"), []byte(layoutFile)); err != nil {
			return err
		}
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
	for _, e := range entries {
		key, err := fullName(e.Ref)
		if err != nil {
			return errors.New("naming " + e.Ref + " in " + dir + ": " + err.Error())
		}
		setEntry(&idx, key, e.Desc, "")
	}
	slices.SortFunc(idx.Manifests, func(a, b v1.Descriptor) int {
		return strings.Compare(a.Annotations[annotationRefName], b.Annotations[annotationRefName])
	})
	raw, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, "index.json"), raw)
}
