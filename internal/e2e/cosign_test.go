package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cosignVersion is the real signer the verification tests check against.
const cosignVersion = "v2.6.5"

var (
	cosignOnce  sync.Once
	cosignPath  string
	cosignBuilt time.Duration // zero when the cached binary was used
	cosignErr   error
)

// cosignBinary returns the cosign CLI, building it from the Go module proxy
// on first use into ${GHCR_PULL_CACHE:-$HOME/.cache/ghcr-pull}/cosign-<version>/
// (about 3 minutes on 2 cores, then cached by version). With CI=true a
// failed build fails the test instead of skipping it.
func cosignBinary(tb testing.TB) string {
	tb.Helper()
	cosignOnce.Do(func() { cosignPath, cosignBuilt, cosignErr = buildCosign() })
	if cosignErr != nil {
		skipOrFatal(tb, "cosign %s unavailable: %v", cosignVersion, cosignErr)
	}
	return cosignPath
}

func cacheDir() string {
	if d := os.Getenv("GHCR_PULL_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "ghcr-pull")
}

func buildCosign() (string, time.Duration, error) {
	dir := filepath.Join(cacheDir(), "cosign-"+cosignVersion)
	bin := filepath.Join(dir, "cosign")
	if out, err := exec.Command(bin, "version").CombinedOutput(); err == nil && strings.Contains(string(out), strings.TrimPrefix(cosignVersion, "v")) {
		return bin, 0, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, err
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	cmd := exec.Command("go", "install", "-trimpath", "github.com/sigstore/cosign/v2/cmd/cosign@"+cosignVersion)
	cmd.Env = cosignBuildEnv(os.Environ(), tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", 0, fmt.Errorf("go install cosign@%s: %v\n%s", cosignVersion, err, lastLinesOf(string(out), 20))
	}
	// Rename, so a concurrent run never sees half a binary.
	if err := os.Rename(filepath.Join(tmp, "cosign"), bin); err != nil {
		return "", 0, err
	}
	return bin, time.Since(start), nil
}

// cosignBuildEnv builds into gobin with modest parallelism (the machines
// have 2 cores). The module proxy must be reachable: a GOPROXY=off or a
// GOFLAGS=-mod=vendor meant for the project's own build would make a
// fresh machine fail, so both are dropped for this one command.
func cosignBuildEnv(env []string, gobin string) []string {
	out := make([]string, 0, len(env)+3)
	for _, kv := range env {
		switch {
		case kv == "GOPROXY=off", strings.HasPrefix(kv, "GOFLAGS="), strings.HasPrefix(kv, "GOBIN="):
			continue
		}
		out = append(out, kv)
	}
	return append(out, "GOBIN="+gobin, "GOFLAGS=-p=2")
}

func TestCosignBuildEnv(t *testing.T) {
	env := cosignBuildEnv([]string{"HOME=/h", "GOPROXY=off", "GOFLAGS=-mod=vendor", "GOBIN=/x"}, "/tmp/b")
	got := strings.Join(env, " ")
	if got != "HOME=/h GOBIN=/tmp/b GOFLAGS=-p=2" {
		t.Errorf("env %q", got)
	}
}
