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
// test process, cached by version in cacheDir()/<dir>: cached says whether
// a complete build is there, build makes one in tmp (removed afterwards)
// and moves it into dir.
type builtTool struct {
	name   string
	dir    string
	cached func(dir string) (string, bool)
	build  func(dir, tmp string) (string, error)
	once   sync.Once
	path   string
	took   time.Duration // zero when the cached build was used
	err    error
}

// get returns the tool's path, building it on first use. With CI=true a
// failed build fails the test instead of skipping it.
func (t *builtTool) get(tb testing.TB) string {
	tb.Helper()
	t.once.Do(func() { t.path, t.took, t.err = t.make() })
	if t.err != nil {
		skipOrFatal(tb, "%s unavailable: %v", t.name, t.err)
	}
	return t.path
}

func (t *builtTool) make() (string, time.Duration, error) {
	dir := filepath.Join(cacheDir(), t.dir)
	if p, ok := t.cached(dir); ok {
		return p, 0, nil
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
	p, err := t.build(dir, tmp)
	if err != nil {
		return "", 0, err
	}
	return p, time.Since(start), nil
}

// cosign is the real signer the verification tests check against, built
// into ${GHCR_PULL_CACHE:-$HOME/.cache/ghcr-pull}/cosign-<version>/ (about
// 3 minutes on 2 cores, then cached by version).
var cosign = &builtTool{name: "cosign " + cosignVersion, dir: "cosign-" + cosignVersion, cached: cosignCached, build: buildCosign}

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

func cosignCached(dir string) (string, bool) {
	bin := filepath.Join(dir, "cosign")
	out, err := exec.Command(bin, "version").CombinedOutput()
	return bin, err == nil && strings.Contains(string(out), strings.TrimPrefix(cosignVersion, "v"))
}

func buildCosign(dir, tmp string) (string, error) {
	cmd := exec.Command("go", "install", "-trimpath", "github.com/sigstore/cosign/v2/cmd/cosign@"+cosignVersion)
	cmd.Env = proxyBuildEnv(os.Environ(), tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go install cosign@%s: %v\n%s", cosignVersion, err, lastLinesOf(string(out), 20))
	}
	// Rename, so a concurrent run never sees half a binary.
	bin := filepath.Join(dir, "cosign")
	if err := os.Rename(filepath.Join(tmp, "cosign"), bin); err != nil {
		return "", err
	}
	return bin, nil
}

// proxyBuildEnv builds into gobin with modest parallelism (the machines
// have 2 cores). The module proxy must be reachable: a GOPROXY=off or a
// GOFLAGS=-mod=vendor meant for the project's own build would make a
// fresh machine fail, so both are dropped for this one command.
func proxyBuildEnv(env []string, gobin string) []string {
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

func TestProxyBuildEnv(t *testing.T) {
	env := proxyBuildEnv([]string{"HOME=/h", "GOPROXY=off", "GOFLAGS=-mod=vendor", "GOBIN=/x"}, "/tmp/b")
	got := strings.Join(env, " ")
	if got != "HOME=/h GOBIN=/tmp/b GOFLAGS=-p=2" {
		t.Errorf("env %q", got)
	}
}
