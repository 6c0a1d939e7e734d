package action

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// echo is what a careless peer repeats of a secret: plain, as the base64
// of user:secret (a Basic header or a docker auth entry), URL-encoded and
// JSON-escaped.
func echo(user, secret string) string {
	j, _ := json.Marshal(secret)
	return fmt.Sprintf("secret=%s basic=%s url=%s json=%s", secret,
		base64.StdEncoding.EncodeToString([]byte(user+":"+secret)), url.QueryEscape(secret), j[1:len(j)-1])
}

// engineFake is a Docker Engine API on tcp://127.0.0.1:port: /_ping,
// /version, /images/create answered by create (call counts from 1) and
// /images/{name}/json.
type engineFake struct {
	host  string
	calls atomic.Int32
	mu    sync.Mutex
	auths []string // X-Registry-Auth of each /images/create
	query []url.Values
	// repoDigests answers image inspection (none when empty).
	repoDigests []string
	// info answers GET /info.
	info string
}

var apiVersionRE = regexp.MustCompile(`^/v[0-9.]+`)

func startEngine(t *testing.T, create func(w http.ResponseWriter, r *http.Request, call int)) *engineFake {
	t.Helper()
	e := &engineFake{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := apiVersionRE.ReplaceAllString(r.URL.Path, "")
		w.Header().Set("Api-Version", "1.47")
		switch {
		case p == "/_ping":
			io.WriteString(w, "OK")
		case p == "/version":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"Version":"27.5.1","ApiVersion":"1.47","MinAPIVersion":"1.24","Os":"linux","Arch":"amd64"}`)
		case p == "/images/create" && r.Method == http.MethodPost:
			e.mu.Lock()
			e.auths = append(e.auths, r.Header.Get("X-Registry-Auth"))
			e.query = append(e.query, r.URL.Query())
			e.mu.Unlock()
			create(w, r, int(e.calls.Add(1)))
		case p == "/info":
			e.mu.Lock()
			io.WriteString(w, e.info)
			e.mu.Unlock()
		case strings.HasPrefix(p, "/images/") && strings.HasSuffix(p, "/tag") && r.Method == http.MethodPost:
			w.WriteHeader(http.StatusCreated)
		case strings.HasPrefix(p, "/images/") && strings.HasSuffix(p, "/json"):
			e.mu.Lock()
			rd, _ := json.Marshal(append([]string{}, e.repoDigests...))
			// With repoDigests set, the daemon holds the image only once
			// it was pulled, as a real one does.
			absent := len(e.repoDigests) > 0 && e.calls.Load() == 0
			e.mu.Unlock()
			if absent {
				w.WriteHeader(http.StatusNotFound)
				io.WriteString(w, `{"message":"No such image"}`)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"Id":"sha256:`+strings.Repeat("e", 64)+`","RepoDigests":`+string(rd)+`,"Os":"linux","Architecture":"amd64"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	e.host = "tcp://" + strings.TrimPrefix(srv.URL, "http://")
	return e
}

// pullStream answers /images/create with a JSON message stream.
func pullStream(w http.ResponseWriter, msgs ...any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	for _, m := range msgs {
		_ = enc.Encode(m)
	}
}

func streamError(msg string) map[string]any {
	return map[string]any{"errorDetail": map[string]any{"message": msg}, "error": msg}
}

// callError answers /images/create with an error, as dockerd does before
// any stream.
func callError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

// criFake is containerd's CRI service: Version, ImageStatus (nothing
// there) and PullImage answered by pull.
type criFake struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	pull func(*runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error)
}

func (f *criFake) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "containerd", RuntimeVersion: "1.7.24", RuntimeApiVersion: "v1"}, nil
}

func (f *criFake) ImageStatus(context.Context, *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return &runtimeapi.ImageStatusResponse{}, nil
}

func (f *criFake) PullImage(_ context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	return f.pull(r)
}

// startCRI serves f on a unix socket with a short path and returns it.
func startCRI(t *testing.T, f *criFake) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	runtimeapi.RegisterImageServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

func criError(msg string) error { return status.Error(codes.Unknown, msg) }

// fakeJWT is an unsigned ID token, unique per test run.
func fakeJWT(t *testing.T) string {
	enc := base64.RawURLEncoding.EncodeToString
	claims, _ := json.Marshal(map[string]any{"iss": "https://token.actions.githubusercontent.com", "sub": "repo:acme/app:ref:refs/heads/main", "jti": t.Name()})
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc(claims) + ".c2lnbmF0dXJl"
}

// idTokenEndpoint is the Actions runtime's ID token endpoint: it answers
// status (0: 200 with jwt) and counts requests.
func idTokenEndpoint(t *testing.T, jwt string, status int) (env map[string]string, requests *atomic.Int32) {
	t.Helper()
	requests = &atomic.Int32{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.Header.Get("Authorization") != "Bearer runtime-request-token" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"value": jwt})
	}))
	t.Cleanup(srv.Close)
	return map[string]string{"ACTIONS_ID_TOKEN_REQUEST_URL": srv.URL + "/idtoken?api-version=2.0",
		"ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runtime-request-token"}, requests
}

// provider serves handler and returns its URL.
func provider(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return srv.URL
}
