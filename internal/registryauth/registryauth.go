// Package registryauth holds what ghcr-pull sends to a registry: the
// credentials, how they were obtained (Mode) and the anonymous value. It is
// a leaf, as go-containerregistry's authn sits below remote/transport:
// every adapter that hands credentials to a daemon, a cluster or a relay
// imports it, and none of them needs the registry dialect (internal/ghcr).
package registryauth

import (
	"github.com/google/go-containerregistry/pkg/authn"
)

// Mode names how a pull authenticated. It is what the action reports in
// its auth-mode output, so the strings are part of the public contract.
type Mode string

const (
	// ModeToken is a username and a token or PAT (GITHUB_TOKEN included).
	ModeToken Mode = "token"
	// ModeAnonymous sends no credentials at all.
	ModeAnonymous Mode = "anonymous"
	// ModeOIDC is a short-lived credential derived from the workflow's
	// OIDC ID token.
	ModeOIDC Mode = "oidc"
)

// Credentials are what is sent to a registry. The zero value is anonymous.
type Credentials struct {
	Mode     Mode
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
var Anonymous = Credentials{Mode: ModeAnonymous}

// IsAnonymous reports whether nothing would be sent.
func (c Credentials) IsAnonymous() bool {
	return c.Mode == ModeAnonymous || c.Mode == "" || (c.Username == "" && c.Password == "")
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
