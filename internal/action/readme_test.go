package action

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var updateReadme = flag.Bool("update-readme", false, "rewrite the README's input and output tables from action.yml")

// readmeTables renders action.yml's inputs and outputs as the README shows them.
func readmeTables(md Metadata) string {
	esc := func(s string) string { return strings.NewReplacer("|", `\|`, "\n", " ").Replace(strings.TrimSpace(s)) }
	var b strings.Builder
	b.WriteString("| input | default | description |\n|---|---|---|\n")
	for _, in := range md.Inputs {
		def := ""
		switch {
		case in.Required && in.Declared == "":
			def = "required"
		case in.Declared != "":
			def = "`" + in.Declared + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", in.Name, esc(def), esc(in.Description))
	}
	b.WriteString("\n| output | description |\n|---|---|\n")
	for _, out := range md.Outputs {
		fmt.Fprintf(&b, "| `%s` | %s |\n", out.Name, esc(out.Description))
	}
	return b.String()
}

const (
	tablesStart = "<!-- action.yml tables: generated, checked by internal/action/readme_test.go -->\n"
	tablesEnd   = "<!-- end of action.yml tables -->"
)

// The README's usage tables must be action.yml's, so they cannot drift.
// Run `go test ./internal/action -run README -update-readme` after editing
// action.yml.
func TestREADMEMatchesActionYAML(t *testing.T) {
	md := testMetadata(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(readme)
	i, j := strings.Index(s, tablesStart), strings.Index(s, tablesEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the generated tables markers")
	}
	want := readmeTables(md)
	got := s[i+len(tablesStart) : j]
	if got == want {
		return
	}
	if *updateReadme {
		s = s[:i+len(tablesStart)] + want + s[j:]
		if err := os.WriteFile("../../README.md", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README tables differ from action.yml; run with -update-readme. Want:\n%s", want)
}

// Every input the binary reads must be declared, and the binary's defaults
// are action.yml's.
func TestActionYAMLDeclaresEveryInput(t *testing.T) {
	md := testMetadata(t)
	declared := map[string]bool{}
	for _, in := range md.Inputs {
		declared[in.Name] = true
		if strings.TrimSpace(in.Description) == "" {
			t.Errorf("input %s has no description", in.Name)
		}
	}
	var read []string
	get := func(name string) string {
		read = append(read, name)
		if name == "image" {
			return "ghcr.io/a/b:1"
		}
		return ""
	}
	if _, err := ParseConfig(get, md); err != nil {
		t.Fatal(err)
	}
	for _, name := range read {
		if !declared[name] {
			t.Errorf("the binary reads input %q, which action.yml does not declare", name)
		}
	}
	for _, out := range md.Outputs {
		if strings.TrimSpace(out.Description) == "" {
			t.Errorf("output %s has no description", out.Name)
		}
	}
}
