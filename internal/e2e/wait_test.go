package e2e

import (
	"errors"
	"time"
)

// errGaveUp is what waitUntil returns when the time ran out.
var errGaveUp = errors.New("gave up waiting")

// waitUntil is the one readiness loop of the harness: it calls ready every
// interval until it says done, returns a non-nil error (which stops the
// wait and is returned, e.g. "the process exited"), or timeout passes
// (errGaveUp).
func waitUntil(timeout, every time.Duration, ready func() (done bool, err error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := ready()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return errGaveUp
		}
		time.Sleep(every)
	}
}
