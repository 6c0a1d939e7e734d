package ghcr

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Attempt is one way a pull was tried and what it got.
type Attempt struct {
	Mode AuthMode
	Err  error
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

func describeMode(m AuthMode) string {
	switch m {
	case AuthAnonymous:
		return "anonymously"
	case AuthOIDC:
		return "with OIDC-derived credentials"
	default:
		return "with credentials"
	}
}

func fixesFor(registry string, attempts []Attempt) []string {
	var (
		rejected, anonDenied, notFound, transient bool
		bad                                       *failure.BadInput
	)
	for _, a := range attempts {
		var (
			rej *failure.Rejected
			nf  *failure.NotFound
			tr  *failure.Transient
		)
		switch {
		case errors.As(a.Err, &rej) && rej.Anonymous:
			anonDenied = true
		case errors.As(a.Err, &rej):
			rejected = true
		case errors.As(a.Err, &nf):
			notFound = true
		case errors.As(a.Err, &tr):
			transient = true
		case errors.As(a.Err, &bad):
		}
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
	} else if rejected {
		fixes = append(fixes, "check the username and password/token inputs: the registry refused them")
	}
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
	if transient {
		fixes = append(fixes, "the registry was unavailable or rate-limiting: raise `retries` or `timeout`, or try again later")
	}
	return fixes
}
