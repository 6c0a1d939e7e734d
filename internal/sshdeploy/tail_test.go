package sshdeploy

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Guarantee: the stderr tail a remote command's failure shows is cut on a
// rune boundary (through failure.ClipTail) whichever byte of a multi-byte
// rune the cut falls on, even when the writes split runes, and keeps the
// last words whole.
func TestStderrTailCutOnARune(t *testing.T) {
	const last = "bash: docker: command not found"
	for pad := 0; pad < utf8.UTFMax; pad++ {
		var tail tailBuffer
		text := strings.Repeat("😀", 3*tailMax/4) + strings.Repeat("x", pad) + strings.Repeat("é", 100) + last
		for b := []byte(text); len(b) > 0; b = b[min(7, len(b)):] {
			tail.Write(b[:min(7, len(b))])
		}
		got := tail.String()
		if !utf8.ValidString(got) {
			t.Fatalf("pad %d: the tail splits a rune: %q", pad, got[:8])
		}
		if !strings.HasPrefix(got, "…") || !strings.HasSuffix(got, last) || len(got) > failure.MaxMessage+len("…") {
			t.Errorf("pad %d: %d bytes %q…%q, want at most %d after an ellipsis, ending in the last words", pad, len(got), got[:8], got[len(got)-10:], failure.MaxMessage+len("…"))
		}
	}
}
