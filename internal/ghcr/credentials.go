// Package ghcr decides how ghcr-pull authenticates to a registry: it holds
// the credentials, probes the registry with them before anything is pulled,
// classifies every answer into one of a few error classes, and explains a
// failure in terms a workflow author can act on. GHCR's quirks get special
// care, but nothing here is specific to ghcr.io beyond the diagnosis text.
package ghcr

import (
	"github.com/google/go-containerregistry/pkg/authn"
)

// AuthMode names how a pull authenticated. It is what the action reports in
// its auth-mode output, so the strings are part of the public contract.
type AuthMode string

const (
	// AuthToken is a username and a token or PAT (GITHUB_TOKEN included).
	AuthToken AuthMode = "token"
	// AuthAnonymous sends no credentials at all.
	AuthAnonymous AuthMode = "anonymous"
	// AuthOIDC is a short-lived credential derived from the workflow's
	// OIDC ID token.
	AuthOIDC AuthMode = "oidc"
)

// Credentials are what is sent to a registry. The zero value is anonymous.
type Credentials struct {
	Mode     AuthMode
	Username string
	Password string
	// Provider names where OIDC-derived credentials came from (aws-ecr, gcp, ...).
	Provider string
	// RegistryToken is the bearer token the probe got for pulling this
	// one repository with these credentials (short-lived, scoped to
	// pull). A runtime that can use it (the Docker Engine's registrytoken)
	// gets it instead of Username and Password, so the daemon never sees
	// the long-lived secret.
	RegistryToken string
}

// Anonymous is the credential set that sends nothing.
var Anonymous = Credentials{Mode: AuthAnonymous}

// IsAnonymous reports whether nothing would be sent.
func (c Credentials) IsAnonymous() bool {
	return c.Mode == AuthAnonymous || c.Mode == "" || (c.Username == "" && c.Password == "")
}

// Authenticator adapts the credentials for go-containerregistry.
func (c Credentials) Authenticator() authn.Authenticator {
	if c.IsAnonymous() {
		return authn.Anonymous
	}
	return &authn.Basic{Username: c.Username, Password: c.Password}
}

// String never shows the secret: credentials end up in %v formatting of
// structs more often than anyone intends.
func (c Credentials) String() string {
	if c.IsAnonymous() {
		return "anonymous"
	}
	return string(c.Mode) + " as " + c.Username
}

// GoString keeps %#v from printing the secret as well.
func (c Credentials) GoString() string { return c.String() }
