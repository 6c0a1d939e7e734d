// Package verify checks, before anything is pulled, that an image digest
// carries a signature or attestation from the signer a user names: a cosign
// key, a keyless (Fulcio) identity, or a GitHub Actions workflow that wrote
// a build-provenance attestation. All cryptography is sigstore-go's; this
// package finds the signatures in the registry (the cosign `.sig` tag and
// OCI referrers) and binds them to the digest that will be pulled.
package verify

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Method is how an image must be signed. The strings are the values of the
// verify input and appear in outputs, so they are part of the contract.
type Method string

const (
	// CosignKey: a cosign signature made with the private half of PublicKey.
	CosignKey Method = "cosign-key"
	// CosignKeyless: a cosign signature by a Fulcio certificate whose
	// identity and OIDC issuer match the policy.
	CosignKeyless Method = "cosign-keyless"
	// GitHubAttestation: a Sigstore bundle attached as an OCI referrer, as
	// actions/attest-build-provenance writes it with push-to-registry.
	GitHubAttestation Method = "github-attestation"
)

// GitHubIssuer is the OIDC issuer of GitHub Actions' ID tokens, the only
// one a github-attestation certificate may come from unless the issuer setting
// says otherwise (GitHub Enterprise Server has its own).
const GitHubIssuer = "https://token.actions.githubusercontent.com"

// SLSAProvenanceV1 is the predicate type actions/attest-build-provenance
// writes, and the default one to require.
const SLSAProvenanceV1 = "https://slsa.dev/provenance/v1"

// Policy is a parsed, validated verification policy. A nil *Policy means
// verification is off.
type Policy struct {
	Method Method
	// PublicKey is the PEM public key (cosign-key).
	PublicKey []byte
	// Identity or IdentityRegexp is the certificate's SAN to require
	// (cosign-keyless); Issuer the OIDC issuer (keyless and attestations).
	Identity, IdentityRegexp string
	Issuer                   string
	// Repository (owner/name) and SignerWorkflow
	// (owner/name/.github/workflows/file.yml) are required of attestations.
	Repository, SignerWorkflow string
	// PredicateType is the in-toto predicate an attestation must carry.
	PredicateType string
	// TrustedRoot is a trusted_root.json; nil uses the embedded public-good
	// root (trusted_root.json in this package).
	TrustedRoot []byte

	// Set by ParsePolicy, so Verify never re-parses the strings above.
	key    crypto.PublicKey
	keyID  string
	trust  *trustedRoot
	sanRE  *regexp.Regexp
	issuer string
}

// Setting is one of a policy's settings, as ParsePolicy reads it. Its
// errors name the setting (a *failure.BadInput's Input, and {setting} in
// its Problem and Fix): the caller names the inputs users know them by.
type Setting string

// The settings.
const (
	SettingMethod         Setting = "method"
	SettingKey            Setting = "key"
	SettingIdentity       Setting = "identity"
	SettingIdentityRegexp Setting = "identity-regexp"
	SettingIssuer         Setting = "issuer"
	SettingRepository     Setting = "repository"
	SettingSignerWorkflow Setting = "signer-workflow"
	SettingPredicateType  Setting = "predicate-type"
	SettingTrustedRoot    Setting = "trusted-root"
)

// Settings lists every setting, for a caller to name them all.
var Settings = []Setting{SettingMethod, SettingKey, SettingIdentity, SettingIdentityRegexp, SettingIssuer,
	SettingRepository, SettingSignerWorkflow, SettingPredicateType, SettingTrustedRoot}

var (
	repoRE     = regexp.MustCompile(`^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$`)
	workflowRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/\.github/workflows/[^@\s]+\.ya?ml$`)
)

// ParsePolicy reads the settings through get (which returns "" for an
// unset one). It returns nil when verification is off, the default. Every
// mistake is a *failure.BadInput naming the setting to change; a setting
// that the chosen method would ignore is a mistake too, so that a typo in
// the method never silently turns verification off.
func ParsePolicy(get func(Setting) string) (*Policy, error) {
	in := func(n Setting) string { return strings.TrimSpace(get(n)) }
	method := Method(strings.ToLower(in(SettingMethod)))
	allowed := map[Method][]Setting{
		CosignKey:         {SettingKey},
		CosignKeyless:     {SettingIdentity, SettingIdentityRegexp, SettingIssuer, SettingTrustedRoot},
		GitHubAttestation: {SettingRepository, SettingSignerWorkflow, SettingIssuer, SettingPredicateType, SettingTrustedRoot},
	}
	all := []Setting{SettingKey, SettingIdentity, SettingIdentityRegexp, SettingIssuer, SettingRepository, SettingSignerWorkflow, SettingPredicateType, SettingTrustedRoot}

	switch method {
	case "", "false", "none", "off":
		for _, n := range all {
			if in(n) != "" {
				return nil, failure.Bad(string(n), "is set but verification is off", "set {method} to cosign-key, cosign-keyless or github-attestation")
			}
		}
		return nil, nil
	case CosignKey, CosignKeyless, GitHubAttestation:
		if !compiledIn {
			return nil, failure.Bad(string(SettingMethod), "this ghcr-pull was built without verification (-tags noverify)", "use the released image, or build without -tags noverify")
		}
	default:
		return nil, failure.Bad(string(SettingMethod), fmt.Sprintf("%q is not a verification method", method), "use cosign-key, cosign-keyless or github-attestation, or leave it empty")
	}
	for _, n := range all {
		if in(n) != "" && !contains(allowed[method], n) {
			return nil, failure.Bad(string(n), "does not apply to {method}: "+string(method), "remove it, or pick the method it belongs to")
		}
	}

	p := &Policy{Method: method}
	switch method {
	case CosignKey:
		raw, err := readInline(in(SettingKey), "-----BEGIN")
		if err != nil {
			return nil, failure.Bad(string(SettingKey), err.Error(), "give the PEM public key (cosign.pub) inline or as a file path")
		}
		if raw == nil {
			return nil, failure.Bad(string(SettingKey), "is required for {method}: cosign-key", "give the PEM public key (cosign.pub) inline or as a file path")
		}
		if err := p.setKey(raw); err != nil {
			return nil, failure.Bad(string(SettingKey), err.Error(), "give the PEM public key (cosign.pub), not the private key")
		}
		return p, nil
	case CosignKeyless:
		p.Identity, p.IdentityRegexp, p.Issuer = in(SettingIdentity), in(SettingIdentityRegexp), in(SettingIssuer)
		switch {
		case p.Identity == "" && p.IdentityRegexp == "":
			return nil, failure.Bad(string(SettingIdentity), "{method}: cosign-keyless needs the signer's identity", "set {identity} (e.g. https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main) or {identity-regexp}")
		case p.Identity != "" && p.IdentityRegexp != "":
			return nil, failure.Bad(string(SettingIdentityRegexp), "is set together with {identity}", "set only one of them")
		case p.Issuer == "":
			return nil, failure.Bad(string(SettingIssuer), "{method}: cosign-keyless needs the OIDC issuer", "e.g. "+GitHubIssuer)
		}
		if p.IdentityRegexp != "" {
			re, err := regexp.Compile(p.IdentityRegexp)
			if err != nil {
				return nil, failure.Bad(string(SettingIdentityRegexp), "is not a regular expression: "+err.Error(), "use RE2 syntax; anchor it with ^ and $")
			}
			p.sanRE = re
		}
		p.issuer = p.Issuer
	case GitHubAttestation:
		p.Repository, p.SignerWorkflow = in(SettingRepository), in(SettingSignerWorkflow)
		p.Issuer, p.PredicateType = in(SettingIssuer), in(SettingPredicateType)
		if !repoRE.MatchString(p.Repository) {
			return nil, failure.Bad(string(SettingRepository), fmt.Sprintf("%q is not owner/name", p.Repository), "name the repository whose workflow built the image, e.g. octo-org/app")
		}
		if p.SignerWorkflow != "" && !workflowRE.MatchString(p.SignerWorkflow) {
			return nil, failure.Bad(string(SettingSignerWorkflow), fmt.Sprintf("%q is not owner/name/.github/workflows/<file>.yml", p.SignerWorkflow), "e.g. octo-org/app/.github/workflows/release.yml, without @ref")
		}
		if p.Issuer == "" {
			p.Issuer = GitHubIssuer
		}
		if p.PredicateType == "" {
			p.PredicateType = SLSAProvenanceV1
		}
		p.issuer = p.Issuer
		// The certificate's SAN is the workflow that signed, as
		// https://github.com/<owner>/<repo>/.github/workflows/<file>@<ref>.
		// Without a signer workflow, any workflow of the repository will do
		// (as gh attestation verify --repo).
		san := `^https://github\.com/` + regexp.QuoteMeta(p.Repository) + `/\.github/workflows/[^@]+@`
		if p.SignerWorkflow != "" {
			san = `^https://github\.com/` + regexp.QuoteMeta(p.SignerWorkflow) + `@`
		}
		p.sanRE = regexp.MustCompile("(?i)" + san) // GitHub names are case-insensitive
	}

	raw, err := readInline(in(SettingTrustedRoot), "{")
	if err != nil {
		return nil, failure.Bad(string(SettingTrustedRoot), err.Error(), "give a trusted_root.json inline or as a file path")
	}
	p.TrustedRoot = raw
	if p.trust, err = loadTrustedRoot(raw); err != nil {
		return nil, failure.Bad(string(SettingTrustedRoot), "is not a Sigstore trusted root: "+err.Error(), "use the output of `gh attestation trusted-root` or your Sigstore instance's trusted_root.json")
	}
	return p, nil
}

func (p *Policy) setKey(raw []byte) error {
	block, _ := pem.Decode(raw)
	if block == nil {
		return fmt.Errorf("is not PEM")
	}
	if !strings.Contains(block.Type, "PUBLIC KEY") {
		return fmt.Errorf("is a %s, not a public key", block.Type)
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return fmt.Errorf("is not a PKIX public key: %v", err)
	}
	sum := sha256.Sum256(block.Bytes)
	p.PublicKey, p.key, p.keyID = raw, key, "sha256:"+hex.EncodeToString(sum[:])
	return nil
}

// readInline returns v itself when it starts with marker (an inline PEM or
// JSON value, as from a secret or variable), else the file v names, nil for "".
func readInline(v, marker string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	if strings.HasPrefix(v, marker) {
		return []byte(v), nil
	}
	b, err := os.ReadFile(v)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", v, err)
	}
	return b, nil
}

func contains(list []Setting, s Setting) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
