package action

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Guarantee: the file destinations go through the same policy as a
// daemon (credentials, fallback, pinning) and report like one; a failure
// leaves nothing at the path, and the password is never written into it.
func TestFileDestinations(t *testing.T) {
	reg := startRegistry(t)
	cases := []struct {
		name, dest, path, repo, password string
		wantCode                         int
		wantFallback                     string
	}{
		{name: "tar, private, credentials accepted", dest: "tar", path: "out/app.tar", repo: "acme/private", password: testPassword, wantFallback: "false"},
		{name: "oci-layout, public, credentials rejected: anonymous", dest: "oci-layout", path: "out/layout", repo: "acme/public", password: "wrong-" + testPassword, wantFallback: "true"},
		{name: "tar, private, credentials rejected: fails", dest: "tar", path: "out/app.tar", repo: "acme/private", password: "wrong-" + testPassword, wantCode: ExitFailed},
		{name: "oci-layout, private, credentials rejected: fails", dest: "oci-layout", path: "out/layout", repo: "acme/private", password: "wrong-" + testPassword, wantCode: ExitFailed},
		{name: "a path outside the workspace", dest: "tar", path: "../app.tar", repo: "acme/public", wantCode: ExitBadInput},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ws := filepath.Join(t.TempDir(), "workspace")
			if err := os.MkdirAll(ws, 0o755); err != nil {
				t.Fatal(err)
			}
			image := reg.host + "/" + tc.repo + ":1"
			s := runStep(t, map[string]string{"image": image, "username": testUser, "password": tc.password,
				"destination": tc.dest, "path": tc.path}, map[string]string{"GITHUB_WORKSPACE": ws})
			if s.code != tc.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", s.code, tc.wantCode, s.stdout)
			}
			full := filepath.Join(ws, tc.path)
			_, statErr := os.Stat(full)
			if tc.wantCode == ExitBadInput {
				if !strings.Contains(s.stdout, "input \"path\"") {
					t.Errorf("the error does not name the path input:\n%s", s.stdout)
				}
				return
			}
			if tc.wantCode != ExitOK {
				if statErr == nil {
					t.Errorf("a failed run left %s", full)
				}
				ents, _ := os.ReadDir(filepath.Dir(full))
				for _, e := range ents {
					t.Errorf("a failed run left %s", e.Name())
				}
				return
			}
			if statErr != nil {
				t.Fatalf("nothing at the path: %v", statErr)
			}
			var results []ResultJSON
			if err := json.Unmarshal([]byte(s.outputs["results"]), &results); err != nil || len(results) != 1 {
				t.Fatalf("results %q: %v", s.outputs["results"], err)
			}
			r := results[0]
			if r.Runtime != tc.dest || r.Host != tc.path || r.Pulled == nil || !*r.Pulled || r.Digest == "" ||
				r.ImageRef != reg.host+"/"+tc.repo+"@"+r.Digest || s.outputs["fallback-used"] != tc.wantFallback {
				t.Errorf("result %+v, fallback-used %q", r, s.outputs["fallback-used"])
			}
			_ = filepath.Walk(ws, func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() {
					if b, _ := os.ReadFile(p); strings.Contains(string(b), testPassword) {
						t.Errorf("the password is in %s", p)
					}
				}
				return nil
			})
		})
	}
}

// Guarantee: on the command line a path may be anywhere (no workspace).
func TestFileDestinationCLI(t *testing.T) {
	reg := startRegistry(t)
	path := filepath.Join(t.TempDir(), "elsewhere", "app.tar")
	s := runCLI(t, []string{"--destination", "tar", "--path", path, "--auth", "anonymous", reg.host + "/acme/public:1"}, map[string]string{}, "")
	if s.code != ExitOK {
		t.Fatalf("exit %d:\n%s\n%s", s.code, s.stdout, s.stderr)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("no archive at %s: %v", path, err)
	}
}
