package demo

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// The README's first command must work on a fresh machine: every scenario
// behaves as its title says.
func TestDemo(t *testing.T) {
	md, err := os.ReadFile("../../action.yml")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := Run(context.Background(), md, &out); code != 0 {
		t.Fatalf("demo exited %d:\n%s", code, out.String())
	}
	for _, want := range []string{"auth-mode=token", "fallback-used=true", "::notice", "::warning", "::error", "| Image | Host |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Count(out.String(), "--- log (exit 0)") != 3 || strings.Count(out.String(), "--- log (exit 1)") != 1 {
		t.Errorf("unexpected exits:\n%s", out.String())
	}
}
