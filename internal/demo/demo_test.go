package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// engine is a Docker Engine API on tcp://127.0.0.1:port that keeps the
// images pulled into it: pull by digest, tag, inspect, remove. The demo
// never touches a real daemon in the tests.
type engine struct {
	mu      sync.Mutex
	digests map[string]string // repository -> digest pulled
	tags    map[string]string // repository:tag -> repository
	removed []string
}

var apiVersion = regexp.MustCompile(`^/v[0-9.]+`)

func imageID(repo string) string { return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(repo))) }

func (e *engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := apiVersion.ReplaceAllString(r.URL.Path, "")
	w.Header().Set("Api-Version", "1.47")
	q := r.URL.Query()
	switch {
	case p == "/_ping":
		io.WriteString(w, "OK")
	case p == "/version":
		io.WriteString(w, `{"Version":"27.5.1","ApiVersion":"1.47","MinAPIVersion":"1.24","Os":"linux","Arch":"amd64"}`)
	case p == "/images/create" && r.Method == http.MethodPost:
		if !strings.HasPrefix(q.Get("tag"), "sha256:") {
			http.Error(w, `{"message":"the demo pulls by digest"}`, http.StatusBadRequest)
			return
		}
		e.digests[q.Get("fromImage")] = q.Get("tag")
		io.WriteString(w, `{"status":"Digest: `+q.Get("tag")+`"}`+"\n")
	case strings.HasSuffix(p, "/tag") && r.Method == http.MethodPost:
		e.tags[q.Get("repo")+":"+q.Get("tag")] = q.Get("repo")
		w.WriteHeader(http.StatusCreated)
	case strings.HasSuffix(p, "/json") && r.Method == http.MethodGet:
		ref := strings.TrimSuffix(strings.TrimPrefix(p, "/images/"), "/json")
		repo, ok := e.tags[ref]
		if !ok {
			http.Error(w, `{"message":"No such image: `+ref+`"}`, http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"Id": imageID(repo), "RepoTags": []string{ref},
			"RepoDigests": []string{repo + "@" + e.digests[repo]}, "Os": "linux", "Architecture": "amd64"})
	case strings.HasPrefix(p, "/images/") && r.Method == http.MethodDelete:
		id := strings.TrimPrefix(p, "/images/")
		e.removed = append(e.removed, id)
		for ref, repo := range e.tags {
			if imageID(repo) == id {
				delete(e.tags, ref)
				delete(e.digests, repo)
			}
		}
		_ = json.NewEncoder(w).Encode([]map[string]string{{"Deleted": id}})
	default:
		http.NotFound(w, r)
	}
}

// The README's first command must work on a fresh machine: every scenario
// behaves as its title says. The log reads as the runner shows it (no
// ::add-mask:: commands), and every image the demo pulled into the daemon
// is removed at the end.
func TestDemo(t *testing.T) {
	md, err := os.ReadFile("../../action.yml")
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{digests: map[string]string{}, tags: map[string]string{}}
	srv := httptest.NewServer(e)
	defer srv.Close()
	t.Setenv("DOCKER_HOST", "tcp://"+strings.TrimPrefix(srv.URL, "http://"))
	var out bytes.Buffer
	if code := Run(context.Background(), md, &out); code != 0 {
		t.Fatalf("demo exited %d:\n%s", code, out.String())
	}
	got := out.String()
	for _, want := range []string{"Destination: docker", "auth-mode=token", "fallback-used=true", "::notice", "::warning", "::error", "| Image | Host |",
		"values masked by ::add-mask::", "Removed the 2 images the demo pulled from the Docker daemon."} {
		if !strings.Contains(got, want) {
			t.Errorf("demo output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "::add-mask::ghp_") || strings.Contains(got, "\n::add-mask::") {
		t.Errorf("the log shows the ::add-mask:: commands:\n%s", got)
	}
	if strings.Count(got, "--- log (exit 0)") != 3 || strings.Count(got, "--- log (exit 1)") != 1 {
		t.Errorf("unexpected exits:\n%s", got)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.tags) != 0 || len(e.digests) != 0 || len(e.removed) != 2 {
		t.Errorf("left in the daemon: tags %v, digests %v (removed %v)", e.tags, e.digests, e.removed)
	}
}

func TestAsShown(t *testing.T) {
	log := "::add-mask::s3cret-value\n::add-mask::s3cret\nline with s3cret-value and s3cret\n"
	if got, want := asShown(log), "(2 values masked by ::add-mask::, hidden here as the runner hides them)\nline with *** and ***\n"; got != want {
		t.Errorf("asShown = %q, want %q", got, want)
	}
	if got := asShown("plain\n"); got != "plain\n" {
		t.Errorf("asShown without masks = %q", got)
	}
}
