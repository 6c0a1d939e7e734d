package action

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/sethvargo/go-githubactions"
)

// writer is the one way anything leaves the process: log lines,
// annotations, masks, outputs and the summary. It does, once and in one
// place, what every text needs: it takes out every secret it was told
// about (in every form its failure.Redactor knows), neutralises workflow
// commands, and serialises the writes; its sink only formats and writes
// (the runner's workflow-command protocol, or a terminal). A registry or a
// provider that echoes a secret therefore cannot undo the masking, on any
// sink. Every method is safe for concurrent use.
type writer struct {
	mu   sync.Mutex
	red  failure.Redactor
	sink sink
}

// sink is where a writer's text goes, already redacted and neutralised.
// Its methods are called under the writer's lock.
type sink interface {
	// mask hands on the forms the redactor learned for secret (the runner
	// masks them in its own log too).
	mask(secret string, forms []string)
	line(text string)
	annotate(level, title, msg string)
	output(name, value string) error
	summary(markdown string) error
}

// newActionsWriter speaks the runner's workflow-command protocol on w.
func newActionsWriter(w io.Writer, getenv func(string) string) *writer {
	return &writer{sink: &actionsSink{
		gha:    githubactions.New(githubactions.WithWriter(w), githubactions.WithGetenv(getenv)),
		w:      w,
		getenv: getenv,
	}}
}

// newTerminalWriter is for people at a shell: plain lines on errOut,
// outputs as "name: value" lines on out.
func newTerminalWriter(out, errOut io.Writer) *writer {
	return &writer{sink: &terminalSink{out: out, errOut: errOut}}
}

// Mask registers a secret before its first use.
func (w *writer) Mask(secret string) {
	if strings.TrimSpace(secret) == "" {
		return
	}
	forms := w.red.Add(secret)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sink.mask(secret, forms)
}

// MaskCredentials registers a password and its user:password encodings.
func (w *writer) MaskCredentials(user, password string) {
	forms := w.red.AddCredentials(user, password)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sink.mask(password, forms)
}

// Redact takes every known secret out of s, for text that leaves through
// another encoding first (results is JSON).
func (w *writer) Redact(s string) string { return w.red.Redact(s) }

// Info prints a plain log line. Untrusted text (a registry's message) may
// be part of it: escaping newlines keeps it on our line, so it can never
// start a line of its own and be read as a workflow command, also when the
// command-line tool runs in a workflow's run: step.
func (w *writer) Info(format string, args ...any) {
	line := NeutralizeCommands(w.red.Redact(fmt.Sprintf(format, args...)))
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sink.line(line)
}

func (w *writer) annotate(level, title, msg string) {
	// Line breaks are the sink's business (the runner escapes them, a
	// terminal indents them); no line may start a workflow command.
	title, msg = breakLineStarts(w.red.Redact(title)), breakLineStarts(w.red.Redact(msg))
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sink.annotate(level, title, msg)
}

func (w *writer) Notice(title, msg string)  { w.annotate("notice", title, msg) }
func (w *writer) Warning(title, msg string) { w.annotate("warning", title, msg) }
func (w *writer) Error(title, msg string)   { w.annotate("error", title, msg) }

// Output sets a step output.
func (w *writer) Output(name, value string) error {
	value = w.red.Redact(value)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sink.output(name, value)
}

// Summary writes the job summary of results.
func (w *writer) Summary(results []pull.Result) error {
	markdown := w.red.Redact(w.summaryMarkdown(results))
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sink.summary(markdown)
}

// actionsSink writes workflow commands and the runner's file commands.
type actionsSink struct {
	gha    *githubactions.Action
	w      io.Writer
	getenv func(string) string
}

// mask tells the runner every form the redactor learned, so its own log
// masking covers them too. The runner masks per line, and the forms
// include each line of a multi-line secret.
func (a *actionsSink) mask(secret string, forms []string) {
	if strings.TrimSpace(secret) != "" && !slices.Contains(forms, secret) {
		a.gha.AddMask(secret) // shorter than the redactor keeps
	}
	for _, f := range forms {
		if !strings.ContainsAny(f, "\r\n") {
			a.gha.AddMask(f)
		}
	}
	if strings.ContainsAny(secret, "\r\n") {
		a.gha.AddMask(secret)
	}
}

func (a *actionsSink) line(text string) { fmt.Fprintln(a.w, text) }

func (a *actionsSink) annotate(level, title, msg string) {
	c := a.gha.WithFieldsMap(map[string]string{"title": title})
	// go-githubactions escapes %, CR and LF in the message and the
	// properties, so the whole annotation stays one command.
	switch level {
	case "notice":
		c.Noticef("%s", msg)
	case "warning":
		c.Warningf("%s", msg)
	default:
		c.Errorf("%s", msg)
	}
}

// output appends name=value to GITHUB_OUTPUT as a heredoc with a fresh
// random delimiter per value: go-githubactions uses a fixed delimiter, and
// a registry's error text echoed into credential-error could then close the
// heredoc early and define outputs of its own.
func (a *actionsSink) output(name, value string) error {
	path := a.getenv("GITHUB_OUTPUT")
	if path == "" {
		a.line(NeutralizeCommands(fmt.Sprintf("output %s=%s", name, value)))
		return nil
	}
	delim, err := delimiterFor(value)
	if err != nil {
		return err
	}
	return appendFile(path, fmt.Sprintf("%s<<%s\n%s\n%s\n", name, delim, value, delim))
}

func (a *actionsSink) summary(markdown string) error {
	path := a.getenv("GITHUB_STEP_SUMMARY")
	if path == "" {
		return nil
	}
	return appendFile(path, markdown)
}

func delimiterFor(value string) (string, error) {
	for range 3 {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		d := "ghadelimiter_" + hex.EncodeToString(b[:])
		if !strings.Contains(value, d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("could not find an output delimiter absent from the value")
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// NeutralizeCommands makes text safe to print on one log line: line breaks
// are escaped the way the runner escapes command data, and a "::" that
// could open a workflow command is broken with a zero-width space.
func NeutralizeCommands(s string) string {
	return breakCommands(strings.NewReplacer("\r", "%0D", "\n", "%0A").Replace(s))
}

// breakLineStarts breaks the "::" of every line that starts with one
// (after blanks), the only place the runner reads a workflow command; a
// "::" inside a line (an IPv6 address) is kept.
func breakLineStarts(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "::") {
			lines[i] = breakCommands(l)
		}
	}
	return strings.Join(lines, "\n")
}

// breakCommands breaks every "::" with a zero-width space, line breaks
// left as they are.
func breakCommands(s string) string {
	// Repeat: ":::" leaves a "::" after one pass.
	for strings.Contains(s, "::") {
		s = strings.ReplaceAll(s, "::", ":\u200b:")
	}
	return s
}

// terminalSink prints for people at a shell: lines and annotations on
// errOut, outputs as "name: value" lines on out. It has no masking of its
// own behind it: the writer's redaction is all there is.
type terminalSink struct {
	out, errOut io.Writer
}

func (t *terminalSink) mask(string, []string) {}
func (t *terminalSink) line(text string)      { fmt.Fprintln(t.errOut, text) }
func (t *terminalSink) annotate(level, title, msg string) {
	fmt.Fprintf(t.errOut, "%s: %s\n", level, title)
	for _, l := range strings.Split(msg, "\n") {
		fmt.Fprintf(t.errOut, "  %s\n", l)
	}
}

// output prints a value as it is, so that it can be copied (an IPv6 host's
// "::" included), except that no line of it may open a workflow command.
func (t *terminalSink) output(name, value string) error {
	value = breakLineStarts(value)
	if strings.Contains(value, "\n") {
		_, err := fmt.Fprintf(t.out, "%s:\n%s\n", name, value)
		return err
	}
	_, err := fmt.Fprintf(t.out, "%s: %s\n", name, value)
	return err
}
func (t *terminalSink) summary(string) error { return nil }
