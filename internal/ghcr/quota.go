package ghcr

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Quota is a registry's pull quota as it reports it on a manifest answer.
// Docker Hub sends it on every manifest request, including the HEAD the
// probe makes, which it does not count as a pull:
//
//	ratelimit-limit: 100;w=21600
//	ratelimit-remaining: 76;w=21600
//	docker-ratelimit-source: 203.0.113.7
//
// (the IETF RateLimit header draft's form: a count, ";w=" the window in
// seconds). The source is the address or account the pulls count against.
type Quota struct {
	// Registry is the host the quota belongs to, as the image names it.
	Registry  string
	Limit     int
	Remaining int
	Window    time.Duration
	Source    string
}

// ParseQuota reads the quota headers of a registry answer; nil when the
// registry sent none or they do not parse (a registry without a quota,
// like GHCR, or a proxy that mangled them).
func ParseQuota(h http.Header) *Quota {
	limit, window, ok1 := parseRateLimit(h.Get("RateLimit-Limit"))
	remaining, w2, ok2 := parseRateLimit(h.Get("RateLimit-Remaining"))
	if !ok1 || !ok2 {
		return nil
	}
	if window == 0 {
		window = w2
	}
	return &Quota{Limit: limit, Remaining: remaining, Window: window, Source: failure.Clip(h.Get("Docker-RateLimit-Source"))}
}

// parseRateLimit reads "100;w=21600": the count, and the window when given.
func parseRateLimit(v string) (n int, window time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, 0, false
	}
	count, params, _ := strings.Cut(v, ";")
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil || n < 0 {
		return 0, 0, false
	}
	for _, p := range strings.Split(params, ";") {
		k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		if strings.EqualFold(k, "w") {
			if secs, err := strconv.Atoi(val); err == nil && secs > 0 && secs <= 7*86400 {
				window = time.Duration(secs) * time.Second
			}
		}
	}
	return n, window, true
}

// String is the quota as the log and summary say it:
// "76 of 100 pulls left per 6h0m0s window (counted against 203.0.113.7)".
func (q Quota) String() string {
	s := fmt.Sprintf("%d of %d pulls left", q.Remaining, q.Limit)
	if q.Window > 0 {
		s += " per " + q.Window.String() + " window"
	}
	if q.Source != "" {
		s += " (counted against " + q.Source + ")"
	}
	return s
}

// QuotaExceeded: the registry's pull quota is spent (a 429 that carried
// the quota headers), or the step needs more pulls than it has left (Need
// set, from pull's guard, before any target pulled). It is retried only
// when the registry said when (Retry-After); without it, the quota comes
// back as the window slides, hours away, and an immediate retry would
// only be refused again.
type QuotaExceeded struct {
	Quota Quota
	// Need is how many pulls the step needed (the guard); 0 for a 429.
	Need int
	// NeedText says how Need was counted ("2 images × 3 targets").
	NeedText string
	// RetryAfter is the registry's Retry-After, zero when it sent none.
	RetryAfter time.Duration
	// Err is the 429 itself (*failure.Transient), nil for the guard.
	Err error
}

// Class names the quota for failure.ClassOf (results' error_class).
func (e *QuotaExceeded) Class() string { return "quota" }

func (e *QuotaExceeded) Error() string {
	var b strings.Builder
	if e.Need > 0 {
		fmt.Fprintf(&b, "the pull quota of %s has %d pulls left, and this step needs %d (%s): %s; ", e.Quota.Registry, e.Quota.Remaining, e.Need, e.NeedText, e.Quota)
	} else {
		fmt.Fprintf(&b, "the pull quota of %s is spent (429 Too Many Requests; last read: %s); ", e.Quota.Registry, e.Quota)
	}
	switch {
	case e.RetryAfter > 0:
		fmt.Fprintf(&b, "the registry says to retry in %s", e.RetryAfter.Round(time.Second))
	case e.Quota.Window > 0:
		fmt.Fprintf(&b, "pulls come back as the %s window slides (all of them %s after the last pull)", e.Quota.Window, e.Quota.Window)
	default:
		b.WriteString("the registry did not say when it resets")
	}
	b.WriteString("; authenticate for a higher limit, list a mirror in {Mirrors}, or pull onto fewer targets")
	if e.Need > 0 {
		b.WriteString(" (or set {QuotaGuard}: false to try anyway)")
	}
	return b.String()
}

func (e *QuotaExceeded) Unwrap() error { return e.Err }

// Transient lets internal/retry wait for a Retry-After the registry gave;
// with none, retrying in seconds cannot help.
func (e *QuotaExceeded) Transient() bool { return e.RetryAfter > 0 }

// RetryDelay is the registry's Retry-After.
func (e *QuotaExceeded) RetryDelay() time.Duration { return e.RetryAfter }

// OverQuota turns a classified 429 (from the registry, or in a daemon's
// words) into QuotaExceeded when the registry reports a quota q; anything
// else is returned unchanged.
func OverQuota(err error, q *Quota) error {
	te, ok := err.(*failure.Transient)
	if !ok || !te.TooManyRequests() || q == nil {
		return err
	}
	return &QuotaExceeded{Quota: *q, RetryAfter: te.RetryAfter, Err: te}
}
