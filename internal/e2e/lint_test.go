package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// toolBinary finds a Go-installed tool: on PATH, or in GOPATH/bin.
func toolBinary(tb testing.TB, name, install string) string {
	tb.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	skipOrFatal(tb, "%s not installed (scripts/test.sh runs go install %s)", name, install)
	return ""
}

// TestWorkflowsLint runs actionlint over the repository's workflows and the
// act test's workflow. actionlint also checks every `uses: ./` step's
// `with:` keys against action.yml, and the run: scripts with shellcheck
// when it is installed.
func TestWorkflowsLint(t *testing.T) {
	lint := toolBinary(t, "actionlint", "github.com/rhysd/actionlint/cmd/actionlint@v1.7.12")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, ".github", "workflows", "*.yml"))
	if len(files) < 3 {
		t.Fatalf("want ci.yml, release.yml and an example workflow, found %v", files)
	}
	files = append(files, filepath.Join(root, "testdata", "act", "pull.yml"))
	cmd := exec.Command(lint, append([]string{"-no-color"}, files...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("actionlint: %v\n%s", err, out)
	}

	// The linter must be able to fail: a project holding this action.yml
	// and a workflow passing it an input it does not declare.
	probe := t.TempDir()
	actionYAML, err := os.ReadFile(filepath.Join(root, "action.yml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(probe, ".github", "workflows", "bad.yml")
	_ = os.MkdirAll(filepath.Dir(bad), 0o755)
	if err := os.WriteFile(filepath.Join(probe, "action.yml"), actionYAML, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("on: push\njobs:\n  j:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: ./\n        with:\n          image: x\n          no-such-input: y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// actionlint finds a project, and so action.yml, by its .git.
	if out, err := exec.Command("git", "init", "-q", probe).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}
	cmd = exec.Command(lint, "-no-color", bad)
	cmd.Dir = probe
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no-such-input") {
		t.Errorf("actionlint accepted an undeclared input: %v\n%s", err, out)
	}
}
