package ghcr

import (
	"testing"
	"time"
)

func FuzzParseRetryAfter(f *testing.F) {
	f.Add("120")
	f.Add("Wed, 21 Oct 2015 07:28:00 GMT")
	f.Add("-1")
	f.Fuzz(func(t *testing.T, v string) {
		if d := ParseRetryAfter(v, time.Now()); d < 0 {
			t.Fatalf("negative wait %v for %q", d, v)
		}
	})
}
