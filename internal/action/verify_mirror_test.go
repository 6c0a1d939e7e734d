//go:build !noverify

package action

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// signatureReads counts a front's requests for signatures: the .sig tag
// (cosign's legacy layout) and the referrers API (bundles, attestations).
func signatureReads(reqs []ghcrsim.Request) int {
	n := 0
	for _, r := range reqs {
		if strings.HasSuffix(r.Path, ".sig") || strings.Contains(r.Path, "/referrers/") {
			n++
		}
	}
	return n
}

// Guarantee: signatures are read from the image's own registry only,
// never from a mirror, even one that serves the digest. A mirror holding
// a valid signature does not make an upstream image without one pass; a
// mirror holding a forged one does not fail an image upstream signed;
// in both, the mirror's front gets no signature request (it is asked
// for the digest, and nothing else).
func TestVerifyReadsSignaturesOnlyUpstream(t *testing.T) {
	up, m := startRegistry(t), startRegistry(t)
	admin := remote.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"})
	key, keyPEM := cosignKey(t)
	forger, _ := cosignKey(t)
	img, _ := random.Image(128, 1)
	dg, _ := img.Digest()
	var upDigest, mirrorDigest name.Digest
	for _, r := range []*testRegistry{up, m} {
		tag, _ := name.NewTag(r.host + "/acme/private:1")
		if err := remote.Write(tag, img, admin); err != nil {
			t.Fatal(err)
		}
		if r == up {
			upDigest = tag.Context().Digest(dg.String())
		} else {
			mirrorDigest = tag.Context().Digest(dg.String())
		}
	}
	m.front.SetPublic("acme/private")
	in := map[string]string{"image": up.host + "/acme/private:1", "username": testUser, "password": testPassword,
		"destination": "none", "verify": "cosign-key", "verify-key": keyPEM, "retries": "0",
		"mirrors": up.host + "=http://" + m.host}

	// Unsigned upstream, a valid signature on the mirror: fails.
	signImage(t, mirrorDigest, key, admin)
	up.front.ResetLog()
	m.front.ResetLog()
	s := runStep(t, in, nil)
	if s.code != ExitFailed || !strings.Contains(s.stdout, "no cosign-key signature found") {
		t.Errorf("unsigned upstream, signed mirror: exit %d, want %d naming the missing signature\n%s", s.code, ExitFailed, s.stdout)
	}
	if n := signatureReads(m.front.Requests()); n != 0 || len(m.front.Requests()) == 0 {
		t.Errorf("the mirror got %d signature requests of %d (want none, and the digest asked)", n, len(m.front.Requests()))
	}
	if signatureReads(up.front.Requests()) == 0 {
		t.Error("upstream was not asked for the signature")
	}

	// Signed upstream, a forged signature on the mirror: passes with
	// upstream's.
	sig := signImage(t, upDigest, key, admin)
	signImage(t, mirrorDigest, forger, admin)
	up.front.ResetLog()
	m.front.ResetLog()
	s = runStep(t, in, nil)
	if s.code != ExitOK || s.outputs["signature-digest"] != sig {
		t.Errorf("signed upstream, forged mirror: exit %d, signature %q (want upstream's %s)\n%s", s.code, s.outputs["signature-digest"], sig, s.stdout)
	}
	if n := signatureReads(m.front.Requests()); n != 0 || len(m.front.Requests()) == 0 {
		t.Errorf("the mirror got %d signature requests of %d (want none, and the digest asked)", n, len(m.front.Requests()))
	}
}
