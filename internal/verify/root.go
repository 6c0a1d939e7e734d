//go:build !noverify

package verify

import (
	_ "embed"

	"github.com/sigstore/sigstore-go/pkg/root"
)

// compiledIn: this build verifies (see off.go for -tags noverify).
const compiledIn = true

type trustedRoot = root.TrustedRoot

// loadTrustedRoot parses a trusted_root.json, the embedded one for nil.
func loadTrustedRoot(raw []byte) (*trustedRoot, error) {
	if raw == nil {
		raw = publicGoodRoot
	}
	return root.NewTrustedRootFromJSON(raw)
}

// publicGoodRoot is Sigstore's public-good trusted root (Fulcio CAs, Rekor
// and CT log keys, the timestamp authority), used when the trusted-root setting
// is empty. It is a copy of the TUF target trusted_root.json as shipped in
// the github.com/sigstore/sigstore module (pkg/tuf/repository/targets),
// whose content the Go checksum database pins; scripts/update-trusted-root.sh
// refreshes it from a newer release. It is embedded rather than fetched
// through TUF at run time so that verification works on air-gapped runners
// and needs no request beyond the registry's.
//
//go:embed trusted_root.json
var publicGoodRoot []byte
