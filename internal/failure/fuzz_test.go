package failure

import (
	"errors"
	"strings"
	"testing"
)

// Every daemon message gets a class or a plain error, never a panic, and
// the registry's text is kept bounded.
func FuzzClassifyDaemon(f *testing.F) {
	f.Add(500, "unauthorized: authentication required", false)
	f.Add(404, "pull access denied for x, repository does not exist or may require 'docker login'", true)
	f.Add(0, "toomanyrequests: rate limit", false)
	f.Add(0, "no matching manifest for linux/arm64", false)
	f.Fuzz(func(t *testing.T, status int, msg string, anon bool) {
		err := FromDaemon(status, msg, anon)
		if err == nil {
			t.Fatal("nil error for a failure")
		}
		if len(err.Error()) > MaxMessage+200 {
			t.Fatalf("unbounded message: %d bytes", len(err.Error()))
		}
		var bad *BadInput
		if errors.As(err, &bad) && bad.Input == "" {
			t.Fatal("bad input error names no input")
		}
	})
}

func FuzzResponseString(f *testing.F) {
	f.Add(403, "DENIED", "requested access to the resource is denied", "token endpoint")
	f.Fuzz(func(t *testing.T, status int, code, msg, where string) {
		s := Response{Status: status, Code: code, Message: msg, Where: where}.String()
		if msg != "" && !strings.Contains(s, msg) {
			t.Fatalf("message lost: %q", s)
		}
	})
}
