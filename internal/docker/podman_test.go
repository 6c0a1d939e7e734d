package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// What Podman 4.3.1's service answers to a ping, besides Api-Version 1.41.
var libpodPing = http.Header{"Server": {"Libpod/4.3.1 (linux)"}, "Libpod-Api-Version": {"4.3.1"}}

// Podman's stream for a pull, new or not: only the ID and "Already
// exists" differ, and the end is the same.
var podmanStream = stream(
	`{"status":"Pulling fs layer","progressDetail":{},"id":"a9cbc8688736"}`,
	`{"status":"Download complete","progressDetail":{},"id":"a9cbc8688736"}`,
	`{"status":"Download complete","progressDetail":{},"id":"769541a1ba88"}`,
)

func TestRuntimeFromPing(t *testing.T) {
	for _, tt := range []struct {
		name string
		ping http.Header
		want string
	}{
		{"dockerd", http.Header{"Server": {"Docker/28.2.2 (linux)"}}, "docker"},
		{"no server header", nil, "docker"},
		{"podman", libpodPing, "podman"},
		{"podman, Libpod-Api-Version alone", http.Header{"Libpod-Api-Version": {"4.3.1"}}, "podman"},
		{"podman, Server alone", http.Header{"Server": {"Libpod/5.2.0 (linux)"}}, "podman"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := openFakeAs(t, tt.ping, stream())
			if name, ns := e.Runtime(); name != tt.want || ns != "" {
				t.Errorf("Runtime() = %q, %q, want %q", name, ns, tt.want)
			}
		})
	}
}

// Over (the SSH path) recognises Podman the same way.
func TestOverRecognisesPodman(t *testing.T) {
	srv := httptest.NewServer(&fakeEngine{ping: libpodPing, create: stream()})
	t.Cleanup(srv.Close)
	e, err := Over(context.Background(), func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", strings.TrimPrefix(srv.URL, "http://"))
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if name, _ := e.Runtime(); name != "podman" {
		t.Errorf("Runtime() = %q, want podman", name)
	}
}

// Podman drops registrytoken from X-Registry-Auth, so it gets the
// username and password; anonymous sends nothing, token or not.
func TestPodmanGetsUsernameAndPassword(t *testing.T) {
	e, f := openFakeAs(t, libpodPing, podmanStream)
	scoped := token
	scoped.RegistryToken = "scoped.jwt.token"
	anon := registryauth.Anonymous
	anon.RegistryToken = "anonymous.jwt.token"
	for _, c := range []registryauth.Credentials{scoped, anon} {
		if _, err := e.Pull(context.Background(), "ghcr.io/acme/app:1", nil, c, nil); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := base64.URLEncoding.DecodeString(f.auths[0])
	var got map[string]string
	if err != nil || json.Unmarshal(raw, &got) != nil {
		t.Fatalf("X-Registry-Auth %q: %v", f.auths[0], err)
	}
	if got["username"] != "octocat" || got["password"] != "ghp_pw" || got["registrytoken"] != "" {
		t.Errorf("Podman got %s, want username and password only", raw)
	}
	if f.auths[1] != "" {
		t.Errorf("anonymous pull sent X-Registry-Auth %q", f.auths[1])
	}
}

// Podman's stream never says "Downloaded newer image": pulled is whether
// the reference was absent before the pull.
func TestPodmanPulledIsWhetherItWasAbsent(t *testing.T) {
	e, _ := openFakeAs(t, libpodPing, podmanStream)
	for ref, want := range map[string]bool{
		"ghcr.io/acme/app:1":   false, // the fake holds it
		"ghcr.io/acme/other:1": true,
	} {
		downloaded, err := e.Pull(context.Background(), ref, nil, token, nil)
		if err != nil || downloaded != want {
			t.Errorf("%s: downloaded = %v, %v; want %v", ref, downloaded, err, want)
		}
	}
}

func TestPodmanErrorsClassified(t *testing.T) {
	for msg, want := range map[string]string{
		"initializing source docker://ghcr.io/acme/app@sha256:" + strings.Repeat("a", 64) + ": Requesting bearer token: invalid status code from registry 403 (Forbidden)": "rejected",
		"initializing source docker://ghcr.io/acme/app:1: reading manifest 1 in ghcr.io/acme/app: manifest unknown: manifest unknown":                                      "not-found",
		"initializing source docker://ghcr.io/acme/app:1: Requesting bearer token: invalid status code from registry 503 (Service Unavailable)":                            "transient",
	} {
		e, _ := openFakeAs(t, libpodPing, stream(streamErr(msg)))
		if _, err := e.Pull(context.Background(), "ghcr.io/acme/other:1", nil, token, nil); class(err) != want {
			t.Errorf("%s: %v (%s), want %s", msg, err, class(err), want)
		}
	}
}
