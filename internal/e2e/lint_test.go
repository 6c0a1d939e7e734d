package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// toolBinary finds a Go-installed tool: on PATH, or in GOPATH/bin.
func toolBinary(tb testing.TB, name, install string) string {
	tb.Helper()
	_, version, _ := strings.Cut(install, "@v")
	var candidates []string
	if dir := os.Getenv("GHCR_PULL_TOOLS"); dir != "" {
		candidates = append(candidates, filepath.Join(dir, name))
	}
	if p, err := exec.LookPath(name); err == nil {
		candidates = append(candidates, p)
	}
	var seen []string
	for _, p := range candidates {
		out, err := exec.Command(p, "--version").CombinedOutput()
		if err != nil {
			continue
		}
		if strings.Contains(string(out), version) {
			return p
		}
		seen = append(seen, fmt.Sprintf("%s says %q", p, strings.TrimSpace(string(out))))
	}
	if len(seen) > 0 {
		// An older tool would test something else than what the suite pins.
		tb.Fatalf("%s %s is pinned, but only other versions are installed (%s): run ./scripts/test.sh, which installs %s", name, version, strings.Join(seen, "; "), install)
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
