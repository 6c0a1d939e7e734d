package ghcr

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// Attempt is one way a pull was tried and what it got.
type Attempt struct {
	Mode registryauth.Mode
	Err  error
	// Target is the target whose runtime made the attempt; empty for the
	// runner's own probe of the registry.
	Target string
}

// Diagnose explains a failed pull: what each attempt got and what to do.
// registry is the registry host (ghcr.io gets GHCR's own fixes).
func Diagnose(registry string, attempts []Attempt) string {
	var b strings.Builder
	for _, a := range attempts {
		if a.Err == nil {
			continue
		}
		fmt.Fprintf(&b, "%s: %v\n", describeMode(a.Mode), a.Err)
	}
	fixes := fixesFor(registry, attempts)
	if len(fixes) > 0 {
		b.WriteString("What to do:\n")
		for _, f := range fixes {
			b.WriteString("  - " + f + "\n")
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func describeMode(m registryauth.Mode) string {
	switch m {
	case registryauth.ModeAnonymous:
		return "anonymously"
	case registryauth.ModeOIDC:
		return "with OIDC-derived credentials"
	default:
		return "with credentials"
	}
}

func fixesFor(registry string, attempts []Attempt) []string {
	var (
		rejected, forbidden, anonDenied, notFound, transient, quota bool
		bad                                                         *failure.BadInput
		disagree                                                    []string
	)
	probed := map[registryauth.Mode]bool{} // modes the runner's probe succeeded with
	for _, a := range attempts {
		if a.Err == nil && a.Target == "" {
			probed[a.Mode] = true
		}
	}
	for _, a := range attempts {
		var (
			rej *failure.Rejected
			nf  *failure.NotFound
			tr  *failure.Transient
			qe  *QuotaExceeded
		)
		if errors.As(a.Err, &rej) && a.Target != "" && probed[a.Mode] {
			// The runner was let in, the daemon was not, the same way:
			// neither "wrong password" nor "private" is the answer.
			disagree = append(disagree, fmt.Sprintf("the runner's probe could read the repository %s, but the daemon on %s was refused %s: the daemon reaches the registry differently (registry mirrors or a proxy in its configuration, another address, or a registry that treats its user agent differently); check that daemon's registry settings, or pull on the runner ({PullLocal})", describeMode(a.Mode), a.Target, describeMode(a.Mode)))
			continue
		}
		switch {
		case errors.As(a.Err, &rej) && rej.Anonymous:
			anonDenied = true
		case errors.As(a.Err, &rej):
			rejected = true
			forbidden = forbidden || rej.Forbidden()
		case errors.As(a.Err, &nf):
			notFound = true
		case errors.As(a.Err, &qe):
			quota = true
		case errors.As(a.Err, &tr):
			transient = true
		case errors.As(a.Err, &bad):
		}
	}
	if fixes := signatureFixes(attempts); fixes != nil {
		return fixes
	}
	isGHCR := registry == "ghcr.io"
	var fixes []string
	if bad != nil && bad.Fix != "" {
		fixes = append(fixes, fmt.Sprintf("change input %q: %s", bad.Input, bad.Fix))
	}
	if rejected && isGHCR {
		fixes = append(fixes,
			"GITHUB_TOKEN needs `permissions: packages: read` in the job (or workflow)",
			"an organization package must grant this repository read access: package settings → Manage Actions access",
			"a PAT needs the read:packages scope and, for an org with SAML SSO, to be authorized for that org",
			"a PAT may have expired: create a new one and update the secret")
	} else if rejected && forbidden {
		fixes = append(fixes, "signed in, but no access to this repository: the registry accepted the username and password/token and grants them no pull access here; give that user read access to the repository, or use credentials that have it")
	} else if rejected {
		fixes = append(fixes, "check the username and password/token inputs: the registry refused them")
	}
	fixes = append(fixes, disagree...)
	if anonDenied {
		if isGHCR {
			fixes = append(fixes, "the package is private (GHCR packages are private by default): make it public, or pass credentials that can read it")
		} else {
			fixes = append(fixes, "the repository is private or does not exist: pass credentials that can read it")
		}
	}
	if notFound {
		fixes = append(fixes, "check that the repository, tag or digest exists and is spelled as pushed")
	}
	if quota {
		fixes = append(fixes, "the registry's pull quota is spent or short: sign in (authenticated accounts get a higher limit), list a mirror that serves the image in `{Mirrors}`, or run when the window has freed pulls")
	}
	if transient {
		fixes = append(fixes, "the registry was unavailable or rate-limiting: raise `retries` or `timeout`, or try again later")
	}
	return fixes
}

// signatureFixes is the advice for an image a verify policy refused, nil
// when none was. It stands alone: verification runs only after the probe
// resolved the digest, so credentials refused on the way were already
// recovered from by the anonymous fallback (credential_error reports them)
// and are not why the image failed.
func signatureFixes(attempts []Attempt) []string {
	var fixes []string
	seen := map[string]bool{}
	for _, a := range attempts {
		class := failure.ClassOf(a.Err)
		if seen[class] {
			continue
		}
		seen[class] = true
		switch class {
		case failure.Unsigned:
			fixes = append(fixes, "no signature the verify policy accepts is attached to this digest: sign the digest that was pushed last (cosign sign <image>@<digest>, or attest it for github-attestation) in the repository it is pulled from; a signature of an earlier push of the same tag does not count")
		case failure.InvalidSignature:
			// {Verify...} name the policy's settings; the caller names them as
			// its users know them.
			fixes = append(fixes, "a signature is attached but does not verify: check that {VerifyKey} is the public half of the key that signed (keyless: that {VerifyTrustedRoot} trusts the Sigstore instance that issued the certificate), and re-sign the digest if the signature was made for another one")
		case failure.SignerMismatch:
			fixes = append(fixes, "the image is signed, but not by the signer the policy names: compare the signer above with {VerifyIdentity} (or {VerifyIdentityRegexp}), {VerifyIssuer}, {VerifyRepository} and {VerifySignerWorkflow}, then correct those inputs or sign from the expected workflow")
		}
	}
	return fixes
}
