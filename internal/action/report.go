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
	"github.com/sethvargo/go-githubactions"
)

// reporter is the one way anything leaves the process: log lines,
// annotations, masks, outputs and the summary. Every text it writes goes
// through its failure.Redactor first, so a secret it was told about never
// leaves in any form, whoever echoed it. Every method is safe for
// concurrent use.
type reporter interface {
	// Mask registers a secret before its first use; MaskCredentials
	// registers a password and its user:password encodings.
	Mask(secret string)
	MaskCredentials(user, password string)
	// Redact takes every known secret out of s. Writers redact on their
	// own; the summary needs it before it escapes text for HTML, which
	// would otherwise turn a secret into a form nobody masks.
	Redact(s string) string
	Info(format string, args ...any)
	Notice(title, msg string)
	Warning(title, msg string)
	Error(title, msg string)
	Output(name, value string) error
	Summary(markdown string) error
}

// actionsReporter speaks the runner's workflow-command protocol.
type actionsReporter struct {
	mu     sync.Mutex
	red    failure.Redactor
	gha    *githubactions.Action
	w      io.Writer
	getenv func(string) string
}

func newActionsReporter(w io.Writer, getenv func(string) string) *actionsReporter {
	return &actionsReporter{
		gha:    githubactions.New(githubactions.WithWriter(w), githubactions.WithGetenv(getenv)),
		w:      w,
		getenv: getenv,
	}
}

func (r *actionsReporter) Mask(secret string) {
	if strings.TrimSpace(secret) == "" {
		return
	}
	r.addMasks(secret, r.red.Add(secret))
}

func (r *actionsReporter) Redact(s string) string { return r.red.Redact(s) }

func (r *actionsReporter) MaskCredentials(user, password string) {
	r.addMasks(password, r.red.AddCredentials(user, password))
}

// addMasks tells the runner every form the redactor learned, so its own
// log masking covers them too. The runner masks per line, and the forms
// include each line of a multi-line secret.
func (r *actionsReporter) addMasks(secret string, forms []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if strings.TrimSpace(secret) != "" && !slices.Contains(forms, secret) {
		r.gha.AddMask(secret) // shorter than the redactor keeps
	}
	for _, f := range forms {
		if !strings.ContainsAny(f, "\r\n") {
			r.gha.AddMask(f)
		}
	}
	if strings.ContainsAny(secret, "\r\n") {
		r.gha.AddMask(secret)
	}
}

// Info prints a plain log line. Untrusted text (a registry's message) may
// be part of it: escaping newlines keeps it on our line, so it can never
// start a line of its own and be read as a workflow command.
func (r *actionsReporter) Info(format string, args ...any) {
	line := NeutralizeCommands(r.red.Redact(fmt.Sprintf(format, args...)))
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintln(r.w, line)
}

func (r *actionsReporter) annotate(level, title, msg string) {
	title, msg = r.red.Redact(title), r.red.Redact(msg)
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.gha.WithFieldsMap(map[string]string{"title": title})
	// go-githubactions escapes %, CR and LF in the message and the
	// properties, so the whole annotation stays one command.
	switch level {
	case "notice":
		a.Noticef("%s", msg)
	case "warning":
		a.Warningf("%s", msg)
	default:
		a.Errorf("%s", msg)
	}
}

func (r *actionsReporter) Notice(title, msg string)  { r.annotate("notice", title, msg) }
func (r *actionsReporter) Warning(title, msg string) { r.annotate("warning", title, msg) }
func (r *actionsReporter) Error(title, msg string)   { r.annotate("error", title, msg) }

// Output appends name=value to GITHUB_OUTPUT as a heredoc with a fresh
// random delimiter per value: go-githubactions uses a fixed delimiter, and
// a registry's error text echoed into credential-error could then close the
// heredoc early and define outputs of its own.
func (r *actionsReporter) Output(name, value string) error {
	value = r.red.Redact(value)
	path := r.getenv("GITHUB_OUTPUT")
	if path == "" {
		r.Info("output %s=%s", name, value)
		return nil
	}
	delim, err := delimiterFor(value)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return appendFile(path, fmt.Sprintf("%s<<%s\n%s\n%s\n", name, delim, value, delim))
}

func (r *actionsReporter) Summary(markdown string) error {
	path := r.getenv("GITHUB_STEP_SUMMARY")
	if path == "" {
		return nil
	}
	markdown = r.red.Redact(markdown)
	r.mu.Lock()
	defer r.mu.Unlock()
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
	s = strings.NewReplacer("\r", "%0D", "\n", "%0A").Replace(s)
	// Repeat: ":::" leaves a "::" after one pass.
	for strings.Contains(s, "::") {
		s = strings.ReplaceAll(s, "::", ":\u200b:")
	}
	return s
}

// terminalReporter is for people at a shell: plain lines on stderr,
// outputs as "name: value" lines on stdout.
type terminalReporter struct {
	mu     sync.Mutex
	red    failure.Redactor
	out    io.Writer
	errOut io.Writer
}

func (t *terminalReporter) Mask(secret string)     { t.red.Add(secret) }
func (t *terminalReporter) Redact(s string) string { return t.red.Redact(s) }
func (t *terminalReporter) MaskCredentials(user, password string) {
	t.red.AddCredentials(user, password)
}
func (t *terminalReporter) Info(format string, args ...any) {
	line := t.red.Redact(fmt.Sprintf(format, args...))
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintln(t.errOut, line)
}
func (t *terminalReporter) line(level, title, msg string) {
	title, msg = t.red.Redact(title), t.red.Redact(msg)
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.errOut, "%s: %s\n", level, title)
	for _, l := range strings.Split(msg, "\n") {
		fmt.Fprintf(t.errOut, "  %s\n", l)
	}
}
func (t *terminalReporter) Notice(title, msg string)  { t.line("notice", title, msg) }
func (t *terminalReporter) Warning(title, msg string) { t.line("warning", title, msg) }
func (t *terminalReporter) Error(title, msg string)   { t.line("error", title, msg) }
func (t *terminalReporter) Output(name, value string) error {
	value = t.red.Redact(value)
	t.mu.Lock()
	defer t.mu.Unlock()
	if strings.Contains(value, "\n") {
		_, err := fmt.Fprintf(t.out, "%s:\n%s\n", name, value)
		return err
	}
	_, err := fmt.Fprintf(t.out, "%s: %s\n", name, value)
	return err
}
func (t *terminalReporter) Summary(string) error { return nil }
