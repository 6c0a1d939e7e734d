package action

import (
	"bytes"
	"errors"
	"html"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/pull"
)

// parseOutputs reads GITHUB_OUTPUT the way the runner does.
func parseOutputs(t *testing.T, data string) map[string]string {
	t.Helper()
	out := map[string]string{}
	lines := strings.Split(data, "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if l == "" {
			continue
		}
		if name, delim, ok := strings.Cut(l, "<<"); ok {
			var val []string
			for i++; i < len(lines) && lines[i] != delim; i++ {
				val = append(val, lines[i])
			}
			out[name] = strings.Join(val, "\n")
			continue
		}
		name, val, _ := strings.Cut(l, "=")
		out[name] = val
	}
	return out
}

func TestOutputsCannotBeInjected(t *testing.T) {
	dir := t.TempDir()
	outFile := filepath.Join(dir, "out")
	env := map[string]string{"GITHUB_OUTPUT": outFile}
	var log bytes.Buffer
	r := newActionsWriter(&log, func(k string) string { return env[k] })
	hostile := "denied\n_GitHubActionsFileCommandDelimeter_\ninjected=1\nghadelimiter_x\nauth-mode=token"
	if err := r.Output("credential-error", hostile); err != nil {
		t.Fatal(err)
	}
	if err := r.Output("auth-mode", "anonymous"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(outFile)
	got := parseOutputs(t, string(data))
	if _, ok := got["injected"]; ok {
		t.Errorf("an output was injected: %v", got)
	}
	if got["credential-error"] != hostile || got["auth-mode"] != "anonymous" || len(got) != 2 {
		t.Errorf("outputs = %#v", got)
	}
}

func TestLogLinesCannotIssueCommands(t *testing.T) {
	var log bytes.Buffer
	r := newActionsWriter(&log, func(string) string { return "" })
	r.Info("registry said: %s", "nope\n::error::pwned\n::add-mask::x")
	r.Warning("t", "a\n::set-output name=x::y")
	for _, line := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		if strings.HasPrefix(line, "::") && !strings.HasPrefix(line, "::warning") {
			t.Errorf("a line opens a workflow command: %q", line)
		}
	}
	if n := strings.Count(log.String(), "\n"); n != 2 {
		t.Errorf("%d lines, want 2: %q", n, log.String())
	}
}

// The command-line tool may run in a workflow's run: step, whose output
// the runner reads for workflow commands too: no line it prints opens one,
// whatever a registry said.
func TestTerminalLinesCannotIssueCommands(t *testing.T) {
	var out, errOut bytes.Buffer
	r := newTerminalWriter(&out, &errOut)
	r.Info("registry said: %s", "nope\n::error::pwned\n::add-mask::x")
	r.Warning("::warning::t", "a\n::set-output name=x::y\n  ::error::indented")
	if err := r.Output("credential-error", "denied\n::error::pwned"); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out.String()+errOut.String(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "::") {
			t.Errorf("a line opens a workflow command: %q", line)
		}
	}
	if err := r.Output("image-ref", "[::1]:5000/acme/app@sha256:1"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "image-ref: [::1]:5000/acme/app@sha256:1\n") {
		t.Errorf("an IPv6 host in a value was changed:\n%s", out.String())
	}
	if !strings.Contains(errOut.String(), "warning: :\u200b:warning:\u200b:t\n  a\n") {
		t.Errorf("the annotation lost its lines:\n%s", errOut.String())
	}
}

func TestMaskComesPerLine(t *testing.T) {
	var log bytes.Buffer
	r := newActionsWriter(&log, func(string) string { return "" })
	r.Mask("line1\nline2")
	before := log.Len()
	r.Mask("")
	if log.Len() != before {
		t.Errorf("empty secret masked: %q", log.String()[before:])
	}
	got := log.String()
	for _, want := range []string{"::add-mask::line1%0Aline2\n", "::add-mask::line1\n", "::add-mask::line2\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in %q", want, got)
		}
	}
}

func TestSummaryEscapesCells(t *testing.T) {
	if got := cell("a|b\n<script>"); strings.ContainsAny(got, "\n<") || !strings.Contains(got, `\|`) {
		t.Errorf("cell not escaped: %q", got)
	}
}

// Guarantee: every output gets a fresh random delimiter, so a value that
// holds the delimiter of another output (or a guess at the next one) can
// never close its heredoc early and define outputs of its own.
func TestOutputDelimitersAreRandom(t *testing.T) {
	outFile := filepath.Join(t.TempDir(), "out")
	env := map[string]string{"GITHUB_OUTPUT": outFile}
	var log bytes.Buffer
	r := newActionsWriter(&log, func(k string) string { return env[k] })
	delimiters := func() []string {
		data, _ := os.ReadFile(outFile)
		// As the runner reads the file: a heredoc's body is not searched
		// for further headers.
		var ds []string
		lines := strings.Split(string(data), "\n")
		for i := 0; i < len(lines); i++ {
			if _, d, ok := strings.Cut(lines[i], "<<"); ok {
				ds = append(ds, d)
				for i++; i < len(lines) && lines[i] != d; i++ {
				}
			}
		}
		return ds
	}
	if err := r.Output("digest", "sha256:1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Output("image-ref", "a@sha256:1"); err != nil {
		t.Fatal(err)
	}
	ds := delimiters()
	if len(ds) != 2 || ds[0] == ds[1] {
		t.Fatalf("delimiters %q: two outputs must get two different ones", ds)
	}
	for _, d := range ds {
		if len(d) < 32 {
			t.Errorf("delimiter %q is too short to be unguessable", d)
		}
	}
	// A hostile value repeats every delimiter seen so far, as a registry
	// could after reading an earlier job's output file.
	hostile := "denied\n" + ds[0] + "\n" + ds[1] + "\ninjected=1\nauth-mode<<EOF\npwned\nEOF"
	if err := r.Output("credential-error", hostile); err != nil {
		t.Fatal(err)
	}
	if err := r.Output("auth-mode", "token"); err != nil {
		t.Fatal(err)
	}
	if ds := delimiters(); len(ds) != 4 || ds[2] == ds[0] || ds[2] == ds[1] {
		t.Errorf("delimiter reused: %q", ds)
	}
	data, _ := os.ReadFile(outFile)
	got := parseOutputs(t, string(data))
	if _, ok := got["injected"]; ok || got["credential-error"] != hostile || got["auth-mode"] != "token" || len(got) != 4 {
		t.Errorf("outputs as the runner reads them: %#v", got)
	}
}

// A secret with HTML or table syntax in it is redacted before the summary
// escapes it: escaped first, it would match no form the redactor knows.
func TestSummaryRedactsBeforeEscaping(t *testing.T) {
	const pw = `tok"en&<|>`
	sumFile := filepath.Join(t.TempDir(), "summary")
	r := newActionsWriter(io.Discard, func(k string) string { return map[string]string{"GITHUB_STEP_SUMMARY": sumFile}[k] })
	r.MaskCredentials("octocat", pw)
	results := []pull.Result{{Image: "ghcr.io/a/b:1", Host: "local", FallbackUsed: true, CredentialError: "denied: " + pw,
		Err: errors.New("denied: " + pw), Diagnosis: "anonymously: denied: " + pw}}
	if err := r.Summary(results); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(sumFile)
	got := string(data)
	escaped := html.EscapeString(pw)
	for _, f := range []string{pw, escaped, strings.ReplaceAll(escaped, "|", `\|`), "tok&#34;en"} {
		if strings.Contains(got, f) {
			t.Errorf("the summary holds %q:\n%s", f, got)
		}
	}
	if strings.Count(got, "denied: ***") != 2 {
		t.Errorf("the summary should say denied: *** in the table and the details:\n%s", got)
	}
}
