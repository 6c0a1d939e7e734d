package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// testFuncs maps every Test, Fuzz and Benchmark function of the module's
// _test.go files to the directories that define it.
func testFuncs(t *testing.T) map[string][]string {
	t.Helper()
	decl := regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)\(`)
	funcs := map[string][]string{}
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "vendor" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range decl.FindAllStringSubmatch(string(data), -1) {
			funcs[m[1]] = append(funcs[m[1]], "./"+filepath.Dir(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return funcs
}

// Every test that docs/security.md names as holding a promise exists, so
// the threat model cannot cite a test that was renamed or removed. A name
// is any `Test…`/`Fuzz…` in backquotes; `TestSSH/sub test` names TestSSH.
func TestSecurityDocNamesRealTests(t *testing.T) {
	doc, err := os.ReadFile("docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	funcs := testFuncs(t)
	quoted := regexp.MustCompile("`((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)(?:/[^`]*)?`")
	names := map[string]bool{}
	for _, m := range quoted.FindAllStringSubmatch(string(doc), -1) {
		names[m[1]] = true
	}
	if len(names) < 20 {
		t.Fatalf("docs/security.md quotes %d test names; the pattern no longer finds them", len(names))
	}
	for n := range names {
		if len(funcs[n]) == 0 {
			t.Errorf("docs/security.md names %s, which no _test.go defines", n)
		}
	}
}

// Every hand mutant under testdata/mutants still applies to the tree and
// names packages and tests that exist, so scripts/mutants.sh judges what
// docs/reliability.md says it does; a stale patch fails here, in the
// ordinary suite, not only when the script runs.
func TestMutantPatchesApply(t *testing.T) {
	patches, err := filepath.Glob("testdata/mutants/*.patch")
	if err != nil {
		t.Fatal(err)
	}
	if len(patches) == 0 {
		t.Fatal("no hand mutants under testdata/mutants")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("git is needed to check the mutant patches")
		}
		t.Skip("no git")
	}
	funcs := testFuncs(t)
	sort.Strings(patches)
	for _, p := range patches {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		head := map[string]string{}
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "diff --git ") {
				break
			}
			if k, v, ok := strings.Cut(l, ": "); ok {
				head[k] = strings.TrimSpace(v)
			}
		}
		pkgs, tests := strings.Fields(head["Packages"]), strings.Fields(head["Killed by"])
		if head["Mutant"] == "" || len(pkgs) == 0 || len(tests) == 0 {
			t.Errorf("%s: needs Mutant:, Packages: and Killed by: lines before the diff", p)
			continue
		}
		for _, pkg := range pkgs {
			if st, err := os.Stat(pkg); err != nil || !st.IsDir() {
				t.Errorf("%s: package %s does not exist", p, pkg)
			}
		}
		for _, name := range tests {
			found := false
			for _, dir := range funcs[name] {
				for _, pkg := range pkgs {
					found = found || filepath.Clean(dir) == filepath.Clean(pkg)
				}
			}
			if !found {
				t.Errorf("%s: %s is no test of %v", p, name, pkgs)
			}
		}
		if out, err := exec.Command(git, "apply", "--check", p).CombinedOutput(); err != nil {
			t.Errorf("%s no longer applies (%v): %s", p, err, out)
		}
	}
}
