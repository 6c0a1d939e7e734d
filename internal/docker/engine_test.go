package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/moby/moby/api/types/registry"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// fakeEngine is the part of the Engine API Pull and Inspect use. create
// answers POST /images/create.
type fakeEngine struct {
	create func(w http.ResponseWriter, r *http.Request)
	// ping are extra headers of every answer (Podman's Libpod ones).
	ping http.Header
	// info answers GET /info.
	info string

	mu    sync.Mutex
	auths []string
	query []url.Values
}

var versionPrefix = regexp.MustCompile(`^/v[0-9.]+`)

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := versionPrefix.ReplaceAllString(r.URL.Path, "")
	w.Header().Set("Api-Version", "1.47")
	for k, v := range f.ping {
		w.Header()[k] = v
	}
	switch {
	case p == "/_ping":
		io.WriteString(w, "OK")
	case p == "/version":
		io.WriteString(w, `{"Version":"27.5.1","ApiVersion":"1.47","MinAPIVersion":"1.24"}`)
	case p == "/info":
		io.WriteString(w, f.info)
	case p == "/images/create" && r.Method == http.MethodPost:
		f.mu.Lock()
		f.auths = append(f.auths, r.Header.Get("X-Registry-Auth"))
		f.query = append(f.query, r.URL.Query())
		f.mu.Unlock()
		f.create(w, r)
	case p == "/images/ghcr.io/acme/app:1/json":
		io.WriteString(w, `{"Id":"sha256:`+strings.Repeat("e", 64)+`","RepoDigests":["ghcr.io/acme/app@sha256:`+strings.Repeat("d", 64)+`"],"Os":"linux","Architecture":"arm64","Variant":"v8"}`)
	case strings.HasPrefix(p, "/images/") && strings.HasSuffix(p, "/json"):
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"message":"No such image"}`)
	default:
		http.NotFound(w, r)
	}
}

func openFake(t *testing.T, create func(w http.ResponseWriter, r *http.Request)) (*Engine, *fakeEngine) {
	t.Helper()
	return openFakeAs(t, nil, create)
}

func openFakeAs(t *testing.T, ping http.Header, create func(w http.ResponseWriter, r *http.Request)) (*Engine, *fakeEngine) {
	t.Helper()
	f := &fakeEngine{create: create, ping: ping}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	e, err := Open(context.Background(), "tcp://"+strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, f
}

func stream(msgs ...string) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for _, m := range msgs {
			io.WriteString(w, m+"\n")
		}
	}
}

func progress(id string, current, total int64) string {
	b, _ := json.Marshal(map[string]any{"status": "Downloading", "id": id, "progressDetail": map[string]int64{"current": current, "total": total}})
	return string(b)
}

func streamErr(msg string) string {
	b, _ := json.Marshal(map[string]any{"errorDetail": map[string]any{"message": msg}, "error": msg})
	return string(b)
}

var token = registryauth.Credentials{Mode: registryauth.ModeToken, Username: "octocat", Password: "ghp_pw"}

// class names an error's class for table tests.
func class(err error) string {
	if err == nil {
		return "ok"
	}
	return failure.ClassOf(err)
}

func TestPullStream(t *testing.T) {
	tests := []struct {
		name           string
		msgs           []string
		creds          registryauth.Credentials
		wantClass      string
		wantDownloaded bool
		wantProgress   [][2]int64
	}{
		{"downloaded newer image, progress summed over layers", []string{
			`{"status":"Pulling from acme/app","id":"1"}`,
			`{"status":"Pulling fs layer","id":"aaa"}`,
			progress("aaa", 10, 100), progress("bbb", 5, 50), progress("aaa", 100, 100),
			`{"status":"Download complete","id":"aaa"}`,
			`{"status":"Digest: sha256:` + strings.Repeat("d", 64) + `"}`,
			`{"status":"Status: Downloaded newer image for ghcr.io/acme/app:1"}`,
		}, token, "ok", true, [][2]int64{{10, 100}, {15, 150}, {105, 150}}},
		{"image is up to date", []string{
			`{"status":"Pulling from acme/app","id":"1"}`,
			`{"status":"Status: Image is up to date for ghcr.io/acme/app:1"}`,
		}, token, "ok", false, nil},
		{"rejected credentials", []string{`{"status":"Pulling from acme/app","id":"1"}`,
			streamErr("Head \"https://ghcr.io/v2/acme/app/manifests/1\": unauthorized: authentication required")}, token, "rejected", false, nil},
		{"anonymous refused", []string{streamErr("pull access denied for ghcr.io/acme/app, repository does not exist or may require 'docker login': denied")},
			registryauth.Anonymous, "anonymous-denied", false, nil},
		{"not found", []string{streamErr("manifest for ghcr.io/acme/app:1 not found: manifest unknown: manifest unknown")}, token, "not-found", false, nil},
		{"rate limited", []string{streamErr("toomanyrequests: retry-after: 1s")}, token, "transient", false, nil},
		{"platform missing", []string{streamErr("no matching manifest for linux/s390x in the manifest list entries")}, token, "bad-input:platform", false, nil},
		{"stream cut", []string{`{"status":"Pulling from acme/app","id":"1"}`, `{"status":"Downl`}, token, "other", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := openFake(t, stream(tt.msgs...))
			var got [][2]int64
			downloaded, err := e.Pull(context.Background(), "ghcr.io/acme/app:1", nil, tt.creds, func(done, total int64) {
				got = append(got, [2]int64{done, total})
			})
			if c := class(err); c != tt.wantClass {
				t.Fatalf("err = %v (%s), want %s", err, c, tt.wantClass)
			}
			if downloaded != tt.wantDownloaded {
				t.Errorf("downloaded = %v, want %v", downloaded, tt.wantDownloaded)
			}
			if tt.wantProgress != nil && !equalProgress(got, tt.wantProgress) {
				t.Errorf("progress %v, want %v", got, tt.wantProgress)
			}
			if !strings.HasPrefix(tt.wantClass, "bad-input") && tt.wantClass != "ok" && tt.wantClass != "other" && !strings.Contains(err.Error(), "daemon") {
				t.Errorf("error %q does not say the daemon answered", err)
			}
		})
	}
}

func equalProgress(a, b [][2]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPullCallErrors(t *testing.T) {
	tests := []struct {
		status    int
		message   string
		creds     registryauth.Credentials
		wantClass string
	}{
		// Messages without a telling phrase: the status decides.
		{401, "login failed", token, "rejected"},
		{404, "no such thing", token, "not-found"},
		{403, "access forbidden", token, "rejected"},
		{404, "pull access denied for ghcr.io/acme/app, repository does not exist", registryauth.Anonymous, "anonymous-denied"},
		{404, "manifest for ghcr.io/acme/app:1 not found: manifest unknown", token, "not-found"},
		// dockerd 20.10 sends rejected credentials as 500.
		{500, "Get \"https://ghcr.io/v2/\": unauthorized: authentication required", token, "rejected"},
		{500, "received unexpected HTTP status: 503 Service Unavailable", token, "transient"},
		{503, "registry unavailable", token, "transient"},
		{400, "invalid reference format", token, "bad-input:image"},
	}
	for _, tt := range tests {
		t.Run(tt.message, func(t *testing.T) {
			e, _ := openFake(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tt.status)
				_ = json.NewEncoder(w).Encode(map[string]string{"message": tt.message})
			})
			_, err := e.Pull(context.Background(), "ghcr.io/acme/app:1", nil, tt.creds, nil)
			if c := class(err); c != tt.wantClass {
				t.Errorf("HTTP %d %q: err = %v (%s), want %s", tt.status, tt.message, err, c, tt.wantClass)
			}
		})
	}
}

// The credentials travel only in the pull call's X-Registry-Auth, and the
// platform asked for in its query.
func TestPullSendsAuthAndPlatform(t *testing.T) {
	e, f := openFake(t, stream(`{"status":"Status: Image is up to date for ghcr.io/acme/app:1"}`))
	platform := &ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	if _, err := e.Pull(context.Background(), "ghcr.io/acme/app:1", platform, token, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Pull(context.Background(), "ghcr.io/acme/app:1", nil, registryauth.Anonymous, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.auths) != 2 {
		t.Fatalf("%d pull calls", len(f.auths))
	}
	raw, err := base64.URLEncoding.DecodeString(f.auths[0])
	var ac registry.AuthConfig
	if err != nil || json.Unmarshal(raw, &ac) != nil || ac.Username != "octocat" || ac.Password != "ghp_pw" {
		t.Errorf("X-Registry-Auth %q does not carry the credentials (%v)", f.auths[0], err)
	}
	if f.auths[1] != "" {
		t.Errorf("anonymous pull sent X-Registry-Auth %q", f.auths[1])
	}
	if got := f.query[0].Get("platform"); got != "linux/arm64/v8" {
		t.Errorf("platform query %q, want linux/arm64/v8", got)
	}
	if got := f.query[1].Get("platform"); got != "" {
		t.Errorf("no platform asked, yet query has %q", got)
	}
	if got := f.query[0].Get("fromImage"); !strings.HasPrefix(got, "ghcr.io/acme/app") {
		t.Errorf("fromImage %q", got)
	}
}

func TestInspect(t *testing.T) {
	e, _ := openFake(t, stream())
	info, err := e.Inspect(context.Background(), "ghcr.io/acme/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if info.PlatformString() != "linux/arm64/v8" || len(info.RepoDigests) != 1 || info.ID != "sha256:"+strings.Repeat("e", 64) {
		t.Errorf("info %+v", info)
	}
	if _, err := e.Inspect(context.Background(), "ghcr.io/acme/other:1"); err == nil {
		t.Errorf("inspect of a missing image succeeded")
	}
	if name, ns := e.Runtime(); name != "docker" || ns != "" {
		t.Errorf("Runtime() = %q, %q", name, ns)
	}
}

func TestOpenUnanswering(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }))
	host := "tcp://" + strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	_, err := Open(context.Background(), host)
	if err == nil || !strings.Contains(err.Error(), "does not answer") || !strings.Contains(err.Error(), "destination: none") {
		t.Errorf("err = %v", err)
	}
	if _, err := Open(context.Background(), "nowhere"); class(err) != "bad-input:Host" {
		t.Errorf("bad Host: %v", err)
	}
}

func TestRegistryAuthAnonymous(t *testing.T) {
	if a, err := RegistryAuth(registryauth.Anonymous); a != "" || err != nil {
		t.Errorf("anonymous auth %q %v", a, err)
	}
}
