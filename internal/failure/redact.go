package failure

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Redactor is the one place secrets are taken out of text that leaves the
// process: every writer (log lines, annotations, outputs, the summary)
// passes its text through Redact, so a peer that echoes a secret (a
// registry's error text, a daemon's stream, an identity provider's
// answer) cannot undo the masking. It knows each secret in the forms it
// travels in: plain, line by line, JSON-escaped, URL-encoded and base64
// (alone, and as user:password in a Basic header). The zero value is
// ready; it is safe for concurrent use.
type Redactor struct {
	mu    sync.RWMutex
	forms map[string]bool
	// byLength is forms, longest first: a longer form (JSON-escaped,
	// base64 of user:password) must go before the plain secret inside it.
	byLength []string
}

// Redacted is what replaces a secret.
const Redacted = "***"

// minSecret is the shortest form redacted: replacing every "a" of a text
// would make it unreadable and hide nothing (GitHub's own log masking
// still masks the secret itself).
const minSecret = 4

// Add registers secret and returns the forms it added, for callers that
// must also hand them on (to the runner's ::add-mask::).
func (r *Redactor) Add(secret string) []string {
	if strings.TrimSpace(secret) == "" {
		return nil
	}
	forms := []string{secret}
	for _, line := range strings.FieldsFunc(secret, func(c rune) bool { return c == '\n' || c == '\r' }) {
		forms = append(forms, strings.TrimSpace(line))
	}
	if b, err := json.Marshal(secret); err == nil {
		forms = append(forms, string(b[1:len(b)-1]))
	}
	forms = append(forms, url.QueryEscape(secret), url.PathEscape(secret))
	forms = append(forms, encodings(secret)...)
	return r.add(forms)
}

// AddCredentials registers password (as Add does) and the base64 of
// user:password, the form an HTTP Basic header and a docker auth entry
// carry.
func (r *Redactor) AddCredentials(user, password string) []string {
	if password == "" {
		return nil
	}
	return append(r.Add(password), r.add(encodings(user+":"+password))...)
}

func encodings(s string) []string {
	b := []byte(s)
	return []string{
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
	}
}

func (r *Redactor) add(forms []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.forms == nil {
		r.forms = map[string]bool{}
	}
	var added []string
	for _, f := range forms {
		if len(f) < minSecret || r.forms[f] {
			continue
		}
		r.forms[f] = true
		r.byLength = append(r.byLength, f)
		added = append(added, f)
	}
	sort.SliceStable(r.byLength, func(i, j int) bool { return len(r.byLength[i]) > len(r.byLength[j]) })
	return added
}

// Redact replaces every known secret form in s with Redacted.
func (r *Redactor) Redact(s string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, f := range r.byLength {
		if strings.Contains(s, f) {
			s = strings.ReplaceAll(s, f, Redacted)
		}
	}
	// Clip (or ClipTail) may have cut a secret in two: the part before an
	// "…" is no whole form, so it is matched there as a prefix, and the
	// part after one as a suffix.
	if !strings.Contains(s, "…") {
		return s
	}
	parts := strings.Split(s, "…")
	for i := range parts {
		if i < len(parts)-1 {
			parts[i] = r.cutPrefix(parts[i])
		}
		if i > 0 {
			parts[i] = r.cutSuffix(parts[i])
		}
	}
	return strings.Join(parts, "…")
}

// cutSuffix redacts the longest end of a known form that text starts with.
func (r *Redactor) cutSuffix(text string) string {
	for _, f := range r.byLength {
		for k := 1; k <= len(f)-minSecret; k++ {
			if strings.HasPrefix(text, f[k:]) {
				return Redacted + strings.TrimPrefix(text, f[k:])
			}
		}
	}
	return text
}

// cutPrefix redacts the longest start of a known form that text ends in.
func (r *Redactor) cutPrefix(text string) string {
	for _, f := range r.byLength {
		for k := len(f) - 1; k >= minSecret; k-- {
			if strings.HasSuffix(text, f[:k]) {
				return strings.TrimSuffix(text, f[:k]) + Redacted
			}
		}
	}
	return text
}
