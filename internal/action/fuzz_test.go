package action

import (
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/oidc"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

var (
	fuzzMetadataOnce sync.Once
	fuzzMetadataMD   Metadata
)

// fuzzMetadata is action.yml, read once per fuzzing process: reading it per
// input would cost most of the run (30x fewer executions).
func fuzzMetadata(t *testing.T) Metadata {
	fuzzMetadataOnce.Do(func() { fuzzMetadataMD = testMetadata(t) })
	return fuzzMetadataMD
}

// No combination of inputs panics, and every rejection names an input.
func FuzzParseConfig(f *testing.F) {
	f.Add("ghcr.io/a/b:1", "auto", "true", "linux/amd64", "docker", "3", "10m", "pw")
	f.Add("", "token", "maybe", "x", "none", "-1", "1", "")
	f.Fuzz(func(t *testing.T, image, auth, fallback, platform, dest, retries, timeout, password string) {
		md := fuzzMetadata(t)
		m := map[string]string{"image": image, "auth": auth, "anonymous-fallback": fallback, "platform": platform,
			"destination": dest, "retries": retries, "timeout": timeout, "password": password}
		_, err := ParseConfig(getter(m), md)
		if err == nil {
			return
		}
		var bad *failure.BadInput
		if !errors.As(err, &bad) || bad.Input == "" {
			t.Fatalf("error %v names no input", err)
		}
		// The password may well occur in another input or in the message's
		// own words; what must hold is that the error does not depend on it.
		if password != "" {
			other := strings.Repeat("x", len(password))
			if other == password {
				other = strings.Repeat("y", len(password))
			}
			m["password"] = other
			_, err2 := ParseConfig(getter(m), md)
			if err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("the error depends on the password: %v vs %v", err, err2)
			}
		}
	})
}

func FuzzNeutralizeCommands(f *testing.F) {
	f.Add("::error::x\n::add-mask::y")
	f.Fuzz(func(t *testing.T, s string) {
		out := NeutralizeCommands(s)
		if strings.ContainsAny(out, "\r\n") || strings.Contains(out, "::") {
			t.Fatalf("unsafe log text: %q", out)
		}
	})
}

// oidcFuzzInputs are the inputs that make up an oidc.Config, and so the only
// ones (with auth) a rejection of OIDC settings may name.
var oidcFuzzInputs = []string{"auth", "oidc-provider", "oidc-audience", "aws-role-arn", "aws-region",
	"gcp-workload-identity-provider", "gcp-service-account", "azure-client-id", "azure-tenant-id",
	"dockerhub-connection-id", "token-exchange-url"}

// No OIDC settings panic; every rejection names one of the OIDC inputs (none
// of them is a secret, so naming the input is all an error may echo); and
// an accepted token-exchange-url sends the ID token only over TLS or to
// loopback, as Validate's own fix text promises.
func FuzzParseOIDCSettings(f *testing.F) {
	f.Add("aws-ecr", "", "arn:aws:iam::123456789012:role/pull", "", "", "", "", "", "", "", "octocat", true)
	f.Add("gcp", "https://iam.googleapis.com/x", "", "", "projects/123/locations/global/workloadIdentityPools/pool/providers/gh",
		"puller@p.iam.gserviceaccount.com", "", "", "", "", "", false)
	f.Add("azure-acr", "", "", "eu-west-1", "", "", "11111111-2222-3333-4444-555555555555", "common", "", "", "", false)
	f.Add("token-exchange", "aud", "", "", "", "", "", "", "conn", "http://127.0.0.1:8080/token", "", false)
	f.Fuzz(func(t *testing.T, provider, audience, roleARN, region, gcpProvider, gcpSA, azureClient, azureTenant, connection, exchangeURL, username string, ecr bool) {
		md := fuzzMetadata(t)
		image := "ghcr.io/acme/app:1"
		if ecr {
			// aws-region may be left to the ECR host name.
			image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1"
		}
		m := map[string]string{"image": image, "auth": "oidc", "username": username,
			"oidc-provider": provider, "oidc-audience": audience, "aws-role-arn": roleARN, "aws-region": region,
			"gcp-workload-identity-provider": gcpProvider, "gcp-service-account": gcpSA,
			"azure-client-id": azureClient, "azure-tenant-id": azureTenant,
			"dockerhub-connection-id": connection, "token-exchange-url": exchangeURL}
		c, err := ParseConfig(getter(m), md)
		if err != nil {
			var bad *failure.BadInput
			if !errors.As(err, &bad) || bad.Input == "" {
				t.Fatalf("error %v names no input", err)
			}
			named := false
			for _, in := range oidcFuzzInputs {
				named = named || bad.Input == in
			}
			// Docker Hub's org user is the username input; only its
			// absence may be blamed on it.
			named = named || bad.Input == "username" && strings.TrimSpace(username) == ""
			if !named {
				t.Fatalf("error %v names %q, not an OIDC input", err, bad.Input)
			}
			return
		}
		if c.OIDC == nil || c.Credentials.Mode != registryauth.ModeOIDC || c.Credentials.Provider != c.OIDC.Provider {
			t.Fatalf("auth oidc accepted without OIDC credentials: %+v", c)
		}
		if c.OIDC.Provider == oidc.TokenExchange {
			u, perr := url.Parse(c.OIDC.TokenExchangeURL)
			if perr != nil || u.Host == "" {
				t.Fatalf("token-exchange-url %q accepted but is not a URL with a host", c.OIDC.TokenExchangeURL)
			}
			if ip := net.ParseIP(u.Hostname()); u.Scheme != "https" && !(u.Scheme == "http" && (u.Hostname() == "localhost" || ip != nil && ip.IsLoopback())) {
				t.Fatalf("token-exchange-url %q accepted: the ID token would go in clear to %q", c.OIDC.TokenExchangeURL, u.Host)
			}
		}
	})
}
