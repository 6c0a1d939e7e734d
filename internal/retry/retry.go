// Package retry runs an operation again when it failed transiently, with
// exponential backoff and full jitter, honouring a server's Retry-After, and
// never past the context's deadline.
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Retryable is implemented by errors worth another attempt. Classification
// happens where the response is read (internal/ghcr); this package only
// asks.
type Retryable interface {
	error
	Transient() bool
	// RetryDelay is the wait the peer asked for (Retry-After), or zero.
	RetryDelay() time.Duration
}

// Policy bounds the attempts. The zero value tries once.
type Policy struct {
	// Retries is how many times to try again after the first attempt.
	Retries int
	// Base is the first backoff; it doubles each time up to Max.
	Base time.Duration
	Max  time.Duration
	// OnRetry, when set, hears about each retry before the wait.
	OnRetry func(attempt int, wait time.Duration, err error)
}

// Default is the action's policy: 1s, 2s, 4s... capped at 30s.
func Default(retries int) Policy {
	return Policy{Retries: retries, Base: time.Second, Max: 30 * time.Second}
}

// maxRetryAfter bounds what a server can make us wait: a registry that
// sends Retry-After: 86400 fails the step at once, rather than hang it or
// retry early into the same refusal.
const maxRetryAfter = 2 * time.Minute

// Do runs op until it succeeds, fails with a non-retryable error, runs out of
// retries, or the context ends. It returns the last error.
func Do(ctx context.Context, p Policy, op func(ctx context.Context) error) error {
	for attempt := 0; ; attempt++ {
		err := op(ctx)
		if err == nil {
			return nil
		}
		var r Retryable
		if !errors.As(err, &r) || !r.Transient() || attempt >= p.Retries {
			return err
		}
		wait := p.backoff(attempt)
		if ra := r.RetryDelay(); ra > 0 {
			if ra > maxRetryAfter {
				// Retrying before the peer said to would only be
				// refused again (a spent pull quota): report it now.
				return err
			}
			wait = ra
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			// Waiting would outlive the step: report the real fault now
			// rather than a bare "deadline exceeded" later.
			return err
		}
		if p.OnRetry != nil {
			p.OnRetry(attempt+1, wait, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func (p Policy) backoff(attempt int) time.Duration {
	base, ceiling := p.Base, p.Max
	if base <= 0 {
		base = time.Second
	}
	if ceiling <= 0 {
		ceiling = 30 * time.Second
	}
	d := base << attempt
	if d > ceiling || d <= 0 {
		d = ceiling
	}
	// Half fixed, half jitter: spreads a fleet of runners hitting one
	// registry without ever retrying immediately.
	return d/2 + rand.N(d/2+1)
}
