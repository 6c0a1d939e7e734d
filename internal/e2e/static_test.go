package e2e

import (
	"os/exec"
	"testing"
)

// The busybox check must refuse what a dynamic busybox looks like: any
// dynamically linked executable (the go command is static, so the test
// uses the shell).
func TestStaticBinaryCheck(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	if err := staticBinary(sh); err == nil {
		t.Errorf("%s (dynamically linked) accepted as static", sh)
	}
	if bb, err := exec.LookPath("busybox"); err == nil {
		if err := staticBinary(bb); err != nil {
			t.Errorf("the busybox the suite uses: %v", err)
		}
	}
}
