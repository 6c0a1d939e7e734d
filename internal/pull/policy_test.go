package pull

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// scriptedRegistry is a token-auth registry whose answers a test sets: the
// token endpoint hands "user-token" for Basic credentials and "anon-token"
// without; the manifest of acme/app:1 answers by token.
type scriptedRegistry struct {
	t   *testing.T
	url string

	mu          sync.Mutex
	tokenStatus int   // answer to a token request with credentials (0: 200)
	userStatus  []int // answers to manifest requests with user-token, in turn (last repeats; 0: 200)
	anonStatus  int   // answer to manifest requests with anon-token (0: 200)
	retryAfter  string
	log         []regRequest
}

type regRequest struct {
	at     time.Time
	method string
	path   string
	auth   string
}

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func startScripted(t *testing.T) *scriptedRegistry {
	t.Helper()
	s := &scriptedRegistry{t: t}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

func (s *scriptedRegistry) ref() string { return strings.TrimPrefix(s.url, "http://") + "/acme/app:1" }

func (s *scriptedRegistry) requests() []regRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]regRequest(nil), s.log...)
}

// anonymousAttempts counts the requests of an anonymous attempt: token
// requests without credentials and manifest requests with their token.
func (s *scriptedRegistry) anonymousAttempts() int {
	n := 0
	for _, r := range s.requests() {
		if (r.path == "/token" && r.auth == "") || r.auth == "Bearer anon-token" {
			n++
		}
	}
	return n
}

func writeRegistryError(w http.ResponseWriter, status int) {
	code := map[int]string{401: "UNAUTHORIZED", 403: "DENIED", 404: "MANIFEST_UNKNOWN", 429: "TOOMANYREQUESTS"}[status]
	if code == "" {
		code = "UNAVAILABLE"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"scripted %d"}]}`, code, status)
}

func (s *scriptedRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.log = append(s.log, regRequest{at: time.Now(), method: r.Method, path: r.URL.Path, auth: r.Header.Get("Authorization")})
	tokenStatus, anonStatus, retryAfter := s.tokenStatus, s.anonStatus, s.retryAfter
	auth := r.Header.Get("Authorization")
	userStatus := 0
	if len(s.userStatus) > 0 && auth == "Bearer user-token" {
		userStatus = s.userStatus[0]
		if len(s.userStatus) > 1 {
			s.userStatus = s.userStatus[1:]
		}
	}
	s.mu.Unlock()
	switch {
	case r.URL.Path == "/token":
		if _, _, basic := r.BasicAuth(); basic {
			if tokenStatus != 0 && tokenStatus != http.StatusOK {
				writeRegistryError(w, tokenStatus)
				return
			}
			fmt.Fprint(w, `{"token":"user-token"}`)
			return
		}
		fmt.Fprint(w, `{"token":"anon-token"}`)
	case r.URL.Path == "/v2/" || !strings.HasPrefix(auth, "Bearer "):
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+s.url+`/token",service="scripted",scope="repository:acme/app:pull"`)
		writeRegistryError(w, http.StatusUnauthorized)
	case r.URL.Path == "/v2/acme/app/manifests/1":
		status := userStatus
		if auth == "Bearer anon-token" {
			status = anonStatus
		}
		if status != 0 && status != http.StatusOK {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			writeRegistryError(w, status)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", testDigest)
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			fmt.Fprint(w, "{}")
		}
	default:
		http.NotFound(w, r)
	}
}

var testToken = registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "pw"}

// Guarantee: only a rejection of the credentials (401/403) leads to an
// anonymous attempt; a missing image (404) or a registry fault (5xx) never
// does, whatever the fallback setting.
func TestProbeFallsBackOnlyOnRejection(t *testing.T) {
	tests := []struct {
		name         string
		tokenStatus  int
		userStatus   int
		wantFallback bool
		wantClass    any // the error's class when the probe fails
	}{
		{name: "token endpoint 403 (GHCR's answer to a bad token)", tokenStatus: 403, wantFallback: true},
		{name: "token endpoint 401", tokenStatus: 401, wantFallback: true},
		{name: "manifest 401", userStatus: 401, wantFallback: true},
		{name: "manifest 403", userStatus: 403, wantFallback: true},
		{name: "manifest 404", userStatus: 404, wantClass: &failure.NotFound{}},
		{name: "manifest 503", userStatus: 503, wantClass: &failure.Transient{}},
		{name: "manifest 500", userStatus: 500, wantClass: &failure.Transient{}},
		{name: "token endpoint 503", tokenStatus: 503, wantClass: &failure.Transient{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := startScripted(t)
			reg.tokenStatus, reg.userStatus = tt.tokenStatus, []int{tt.userStatus}
			images, err := ParseImages([]string{reg.ref()})
			if err != nil {
				t.Fatal(err)
			}
			res := Run(context.Background(), images, nil, Options{Credentials: testToken, Fallback: true, Retry: retry.Policy{Retries: 0}})
			r := res[0]
			if n := reg.anonymousAttempts(); (n > 0) != tt.wantFallback {
				t.Fatalf("anonymous requests: %d, want any: %v (result %+v)", n, tt.wantFallback, r)
			}
			if r.FallbackUsed != tt.wantFallback {
				t.Errorf("FallbackUsed = %v, want %v", r.FallbackUsed, tt.wantFallback)
			}
			if tt.wantFallback {
				// A HEAD answer has no body: the status is all the
				// registry's words there are.
				want := fmt.Sprint(max(tt.tokenStatus, tt.userStatus))
				if r.Err != nil || r.AuthMode != registryauth.ModeAnonymous || !strings.Contains(r.CredentialError, want) {
					t.Errorf("fallback result: mode %q err %v credential-error %q", r.AuthMode, r.Err, r.CredentialError)
				}
				return
			}
			switch tt.wantClass.(type) {
			case *failure.NotFound:
				var nf *failure.NotFound
				if !errors.As(r.Err, &nf) {
					t.Errorf("err = %v, want NotFound", r.Err)
				}
			case *failure.Transient:
				var tr *failure.Transient
				if !errors.As(r.Err, &tr) {
					t.Errorf("err = %v, want Transient", r.Err)
				}
			}
			if r.CredentialError != "" {
				t.Errorf("credential-error %q without a rejection", r.CredentialError)
			}
		})
	}
}

// orderLog records, in order, what the targets and the registry saw.
type orderLog struct {
	mu     sync.Mutex
	events []string
}

func (o *orderLog) add(e string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, e)
}

func (o *orderLog) all() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.events...)
}

type retryEvents struct {
	noEvents
	mu    sync.Mutex
	waits []time.Duration
}

func (e *retryEvents) Retry(_ Image, _ Stage, _ string, _ int, wait time.Duration, _ error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.waits = append(e.waits, wait)
}

// Guarantee: a registry's Retry-After is waited for before the next
// attempt, however short the policy's own backoff.
func TestProbeHonoursRetryAfter(t *testing.T) {
	reg := startScripted(t)
	reg.userStatus, reg.retryAfter = []int{429, 200}, "1"
	images, _ := ParseImages([]string{reg.ref()})
	ev := &retryEvents{}
	start := time.Now()
	res := Run(context.Background(), images, nil, Options{Credentials: testToken,
		Retry: retry.Policy{Retries: 1, Base: time.Millisecond, Max: time.Millisecond}, Events: ev})
	if res[0].Err != nil {
		t.Fatalf("probe failed: %v", res[0].Err)
	}
	if len(ev.waits) != 1 || ev.waits[0] != time.Second {
		t.Errorf("retry waits %v, want [1s] (Retry-After: 1)", ev.waits)
	}
	var manifests []time.Time
	for _, r := range reg.requests() {
		if strings.Contains(r.path, "/manifests/") && r.auth == "Bearer user-token" {
			manifests = append(manifests, r.at)
		}
	}
	if len(manifests) != 2 {
		t.Fatalf("%d manifest requests, want 2", len(manifests))
	}
	if gap := manifests[1].Sub(manifests[0]); gap < 950*time.Millisecond {
		t.Errorf("next attempt %v after the 429, want about 1s", gap)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
}
