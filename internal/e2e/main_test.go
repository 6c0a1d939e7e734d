package e2e

import (
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	left := dockerLeftovers(started)
	Shutdown()
	left = append(left, hostLeftovers()...)
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the end-to-end tests left %d things behind:\n", len(left))
		for _, l := range left {
			fmt.Fprintln(os.Stderr, "  "+l)
		}
		code = 1
	}
	os.Exit(code)
}
