//go:build !noverify

package verify

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Media types and annotations cosign and the attest actions write.
const (
	simpleSigningType   = "application/vnd.dev.cosign.simplesigning.v1+json"
	annotationSignature = "dev.cosignproject.cosign/signature"
	annotationCert      = "dev.sigstore.cosign/certificate"
	annotationBundle    = "dev.sigstore.cosign/bundle"
	// bundleTypePrefix covers application/vnd.dev.sigstore.bundle.v0.3+json
	// (cosign, actions/attest-build-provenance) and the older
	// application/vnd.dev.sigstore.bundle+json;version=0.x spelling.
	bundleTypePrefix = "application/vnd.dev.sigstore.bundle"
)

// candidate is one signature found in the registry, not yet trusted.
type candidate struct {
	// manifest is the digest of the manifest that carried it.
	manifest string
	// Legacy cosign signature (`.sig` tag): the simple-signing payload,
	// the raw signature, and for keyless the PEM certificate and the
	// Rekor bundle annotation.
	payload, sig, cert, rekorBundle []byte
	// bundle is a Sigstore bundle (JSON) from an OCI referrer.
	bundle []byte
	// bad is why the candidate could not even be read; it is then invalid.
	bad string
}

// fetcher reads a digest's signatures with one shared Puller, so ping and
// token are paid once for the image, the `.sig` tag and the referrers.
type fetcher struct {
	digest    name.Digest
	opts      []remote.Option
	anonymous bool
}

// registryError classifies err as the probe does. A 404 means "nothing
// there" and is reported by the caller as no signature, not as an error.
func (f fetcher) registryError(what string, err error) (notFound bool, _ error) {
	cerr := failure.FromRegistry(err, f.anonymous)
	var nf *failure.NotFound
	if errors.As(cerr, &nf) {
		return true, nil
	}
	return false, fmt.Errorf("reading %s of %s: %w", what, f.digest, cerr)
}

// legacySignatures reads the `sha256-<hex>.sig` tag cosign pushes next to
// the image: one layer per signature, the payload as the blob and the
// signature (and certificate, Rekor bundle) in the layer's annotations.
func (f fetcher) legacySignatures() ([]candidate, error) {
	tag := f.digest.Context().Tag(strings.Replace(f.digest.DigestStr(), ":", "-", 1) + ".sig")
	desc, err := remote.Get(tag, f.opts...)
	if err != nil {
		if nf, err := f.registryError("the signature tag "+tag.TagStr(), err); nf || err != nil {
			return nil, err
		}
	}
	img, err := desc.Image()
	if err != nil {
		return []candidate{{manifest: desc.Digest.String(), bad: "the .sig tag is not an image manifest: " + err.Error()}}, nil
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var out []candidate
	for _, l := range m.Layers {
		if len(out) == maxCandidates {
			break
		}
		if l.MediaType != simpleSigningType {
			continue
		}
		c := candidate{manifest: desc.Digest.String()}
		if c.sig, err = base64.StdEncoding.DecodeString(l.Annotations[annotationSignature]); err != nil || len(c.sig) == 0 {
			c.bad = "the signature annotation is missing or not base64"
			out = append(out, c)
			continue
		}
		c.cert = []byte(l.Annotations[annotationCert])
		c.rekorBundle = []byte(l.Annotations[annotationBundle])
		if c.payload, err = f.blob(img, l); err != nil {
			if c.bad, err = f.blobError("the signature payload", err); err != nil {
				return nil, err
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// bundles reads the Sigstore bundles attached to the digest as OCI
// referrers. go-containerregistry falls back to the referrers tag schema
// (`sha256-<hex>` index) on registries without the referrers API, as GHCR
// and distribution 2.8 are.
func (f fetcher) bundles() ([]candidate, error) {
	idx, err := remote.Referrers(f.digest, f.opts...)
	if err != nil {
		if nf, err := f.registryError("the referrers", err); nf || err != nil {
			return nil, err
		}
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []candidate
	for _, d := range im.Manifests {
		if len(out) == maxCandidates {
			break
		}
		// The artifact type in the index is only a hint (anyone who can
		// push can write it); it saves fetching SBOMs and the like.
		if d.ArtifactType != "" && !strings.HasPrefix(d.ArtifactType, bundleTypePrefix) {
			continue
		}
		c := candidate{manifest: d.Digest.String()}
		img, err := remote.Image(f.digest.Context().Digest(d.Digest.String()), f.opts...)
		if err != nil {
			if nf, err := f.registryError("the referrer "+d.Digest.String(), err); !nf {
				return nil, err
			}
			continue // listed but gone: not evidence of anything
		}
		m, err := img.Manifest()
		if err != nil {
			return nil, err
		}
		if len(m.Layers) == 0 || !strings.HasPrefix(string(m.Layers[0].MediaType), bundleTypePrefix) {
			continue
		}
		if c.bundle, err = f.blob(img, m.Layers[0]); err != nil {
			if c.bad, err = f.blobError("the bundle", err); err != nil {
				return nil, err
			}
		}
		out = append(out, c)
	}
	return out, nil
}

var errTooLarge = errors.New("larger than a signature can be")

// blobError turns a failure to read a signature's blob into a reason the
// candidate is invalid (too large, missing), or a registry error to return.
func (f fetcher) blobError(what string, err error) (string, error) {
	if errors.Is(err, errTooLarge) {
		return what + " is " + err.Error(), nil
	}
	if nf, err := f.registryError(what, err); !nf {
		return "", err
	}
	return what + " blob is missing", nil
}

// blob reads a small blob whole, refusing more than maxBlob bytes.
func (f fetcher) blob(img v1.Image, d v1.Descriptor) ([]byte, error) {
	if d.Size > maxBlob {
		return nil, fmt.Errorf("%d bytes, %w", d.Size, errTooLarge)
	}
	l, err := img.LayerByDigest(d.Digest)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed() // the raw blob; ggcr checks its digest as it reads
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxBlob+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBlob {
		return nil, fmt.Errorf("over %d bytes, %w", maxBlob, errTooLarge)
	}
	return b, nil
}
