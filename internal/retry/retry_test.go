package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

type transientErr struct{ after time.Duration }

func (e transientErr) Error() string             { return "transient" }
func (e transientErr) Transient() bool           { return true }
func (e transientErr) RetryDelay() time.Duration { return e.after }

func TestDo(t *testing.T) {
	permanent := errors.New("permanent")
	tests := []struct {
		name      string
		retries   int
		failures  []error // returned in order, then success
		wantCalls int
		wantErr   error
	}{
		{"success first", 3, nil, 1, nil},
		{"transient then success", 3, []error{transientErr{}, transientErr{}}, 3, nil},
		{"permanent not retried", 3, []error{permanent}, 1, permanent},
		{"retries exhausted", 2, []error{transientErr{}, transientErr{}, transientErr{}, transientErr{}}, 3, transientErr{}},
		{"zero retries", 0, []error{transientErr{}}, 1, transientErr{}},
		{"retry-after honoured", 1, []error{transientErr{after: 20 * time.Millisecond}}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			var waits []time.Duration
			p := Policy{Retries: tt.retries, Base: time.Millisecond, Max: 4 * time.Millisecond,
				OnRetry: func(_ int, w time.Duration, _ error) { waits = append(waits, w) }}
			err := Do(context.Background(), p, func(context.Context) error {
				calls++
				if calls <= len(tt.failures) {
					return tt.failures[calls-1]
				}
				return nil
			})
			if calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tt.wantCalls)
			}
			if !errors.Is(err, tt.wantErr) && err != tt.wantErr {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			for i, w := range waits {
				if tt.name == "retry-after honoured" && w != 20*time.Millisecond {
					t.Errorf("wait %d = %v, want the Retry-After 20ms", i, w)
				}
				if tt.name != "retry-after honoured" && (w <= 0 || w > 4*time.Millisecond) {
					t.Errorf("wait %d = %v outside (0, 4ms]", i, w)
				}
			}
		})
	}
}

// A Retry-After beyond what we wait ends the retries at once: retrying
// sooner than the peer said is refused again (a spent pull quota).
func TestDoGivesUpOnLongRetryAfter(t *testing.T) {
	calls := 0
	start := time.Now()
	err := Do(context.Background(), Policy{Retries: 3, Base: time.Millisecond}, func(context.Context) error {
		calls++
		return transientErr{after: maxRetryAfter + time.Second}
	})
	if err == nil || calls != 1 {
		t.Fatalf("err=%v calls=%d: want the first error, no retry", err, calls)
	}
	if time.Since(start) > time.Second {
		t.Errorf("waited %v", time.Since(start))
	}
}

func TestDoStopsAtDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	calls := 0
	start := time.Now()
	err := Do(ctx, Policy{Retries: 100, Base: time.Second, Max: time.Second}, func(context.Context) error {
		calls++
		return transientErr{}
	})
	if err == nil || calls != 1 {
		t.Fatalf("err=%v calls=%d: a wait past the deadline must end retries at once", err, calls)
	}
	if time.Since(start) > 40*time.Millisecond {
		t.Errorf("took %v; should not sleep into the deadline", time.Since(start))
	}
}
