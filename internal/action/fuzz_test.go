package action

import (
	"errors"
	"strings"
	"testing"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
)

// No combination of inputs panics, and every rejection names an input.
func FuzzParseConfig(f *testing.F) {
	f.Add("ghcr.io/a/b:1", "auto", "true", "linux/amd64", "docker", "3", "10m", "pw")
	f.Add("", "token", "maybe", "x", "none", "-1", "1", "")
	f.Fuzz(func(t *testing.T, image, auth, fallback, platform, dest, retries, timeout, password string) {
		m := map[string]string{"image": image, "auth": auth, "anonymous-fallback": fallback, "platform": platform,
			"destination": dest, "retries": retries, "timeout": timeout, "password": password}
		_, err := ParseConfig(getter(m), testMetadata(t))
		if err == nil {
			return
		}
		var bad *ghcr.BadInputError
		if !errors.As(err, &bad) || bad.Input == "" {
			t.Fatalf("error %v names no input", err)
		}
		// The password may well occur in another input or in the message's
		// own words; what must hold is that the error does not depend on it.
		if password != "" {
			other := strings.Repeat("x", len(password))
			if other == password {
				other = strings.Repeat("y", len(password))
			}
			m["password"] = other
			_, err2 := ParseConfig(getter(m), testMetadata(t))
			if err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("the error depends on the password: %v vs %v", err, err2)
			}
		}
	})
}

func FuzzNeutralizeCommands(f *testing.F) {
	f.Add("::error::x\n::add-mask::y")
	f.Fuzz(func(t *testing.T, s string) {
		out := NeutralizeCommands(s)
		if strings.ContainsAny(out, "\r\n") || strings.Contains(out, "::") {
			t.Fatalf("unsafe log text: %q", out)
		}
	})
}
