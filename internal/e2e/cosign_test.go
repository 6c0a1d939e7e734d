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

// builtTool is a tool the suite builds from the Go module proxy once per
// test process, into cacheDir() by version.
type builtTool struct {
	name  string
	build func() (string, time.Duration, error)
	once  sync.Once
	path  string
	took  time.Duration // zero when the cached build was used
	err   error
}

// get returns the tool's path, building it on first use. With CI=true a
// failed build fails the test instead of skipping it.
func (t *builtTool) get(tb testing.TB) string {
	tb.Helper()
	t.once.Do(func() { t.path, t.took, t.err = t.build() })
	if t.err != nil {
		skipOrFatal(tb, "%s unavailable: %v", t.name, t.err)
	}
	return t.path
}

// cosign is the real signer the verification tests check against, built
// into ${GHCR_PULL_CACHE:-$HOME/.cache/ghcr-pull}/cosign-<version>/ (about
// 3 minutes on 2 cores, then cached by version).
var cosign = &builtTool{name: "cosign " + cosignVersion, build: buildCosign}

func cosignBinary(tb testing.TB) string { return cosign.get(tb) }

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
