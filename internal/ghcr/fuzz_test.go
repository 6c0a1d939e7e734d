package ghcr

import (
	"net/http"
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

// Quota headers come from the registry: any text parses to nil or to a
// quota with no negative count or window, and its text stays bounded.
func FuzzParseQuota(f *testing.F) {
	f.Add("100;w=21600", "76;w=21600", "203.0.113.7")
	f.Add("10;w=99999999999", "-1", "")
	f.Add(";;w=;", "0;w=0;q=1", "x")
	f.Fuzz(func(t *testing.T, limit, remaining, source string) {
		h := http.Header{"Ratelimit-Limit": {limit}, "Ratelimit-Remaining": {remaining}, "Docker-Ratelimit-Source": {source}}
		q := ParseQuota(h)
		if q == nil {
			return
		}
		if q.Limit < 0 || q.Remaining < 0 || q.Window < 0 {
			t.Fatalf("negative quota %+v", q)
		}
		if len(q.Source) > 600 {
			t.Fatalf("source not clipped: %d bytes", len(q.Source))
		}
	})
}
