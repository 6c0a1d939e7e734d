package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The cluster the Kubernetes tests start is built from the Go module proxy:
// a wrapper module requires k8s.io/kubernetes and replaces each staging
// module its go.mod points into ./staging with the published version of the
// same release (k8s.io/api => k8s.io/api v0.34.4, ...). etcd is built from
// its own server module. The binaries are cached by version under
// ${GHCR_PULL_CACHE:-$HOME/.cache/ghcr-pull}/kube-<version>/.
const (
	kubeVersion = "v1.34.4"
	etcdVersion = "v3.6.16"
)

// kubeBinaries are the commands built from k8s.io/kubernetes.
var kubeBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"}

// kubeTools holds the directory of the cluster's binaries (and etcd), built on
// first use (about 8 minutes cold on 2 cores).
var kubeTools = &builtTool{name: "kubernetes " + kubeVersion, dir: "kube-" + kubeVersion, cached: kubeCached, build: buildKube}

func kubeBin(tb testing.TB) string { return kubeTools.get(tb) }

func kubeBinsPresent(dir string) bool {
	for _, b := range append(append([]string{}, kubeBinaries...), "etcd") {
		if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	out, err := exec.Command(filepath.Join(dir, "kube-apiserver"), "--version").CombinedOutput()
	return err == nil && strings.Contains(string(out), kubeVersion)
}

func kubeCached(dir string) (string, bool) { return dir, kubeBinsPresent(dir) }

func buildKube(dir, tmp string) (string, error) {
	env := proxyBuildEnv(os.Environ(), filepath.Join(tmp, "bin"))
	run := func(wd string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = wd, append(env, "GOFLAGS=-mod=mod -p=2", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, lastLinesOf(string(out), 20))
		}
		return nil
	}
	mod := filepath.Join(tmp, "mod")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		return "", err
	}
	gomod, err := kubeWrapperGoMod(mod)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
		return "", err
	}
	minor := strings.Split(strings.TrimPrefix(kubeVersion, "v"), ".")[1]
	var ld []string
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ld = append(ld, "-X "+p+".gitVersion="+kubeVersion, "-X "+p+".gitMajor=1", "-X "+p+".gitMinor="+minor,
			"-X "+p+".gitTreeState=clean", "-X "+p+".buildDate=1970-01-01T00:00:00Z")
	}
	args := []string{"build", "-trimpath", "-ldflags=-s -w " + strings.Join(ld, " "), "-o", filepath.Join(tmp, "out") + "/"}
	for _, b := range kubeBinaries {
		args = append(args, "k8s.io/kubernetes/cmd/"+b)
	}
	if err := run(mod, args...); err != nil {
		return "", err
	}
	etcdMod := filepath.Join(tmp, "etcdmod")
	if err := os.MkdirAll(etcdMod, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(etcdMod, "go.mod"), []byte("module kubewrapper/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 "+etcdVersion+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := run(etcdMod, "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(tmp, "out", "etcd"), "go.etcd.io/etcd/server/v3"); err != nil {
		return "", err
	}
	// Rename one by one; kube-apiserver last, since its presence is what
	// marks the directory complete.
	names := append([]string{"etcd"}, kubeBinaries...)
	for i := len(names) - 1; i >= 0; i-- {
		if names[i] == "kube-apiserver" {
			names = append(append(names[:i:i], names[i+1:]...), "kube-apiserver")
			break
		}
	}
	for _, b := range names {
		if err := os.Rename(filepath.Join(tmp, "out", b), filepath.Join(dir, b)); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// kubeWrapperGoMod writes the wrapper's go.mod from kubernetes' own: each
// staging replace (=> ./staging/src/k8s.io/x) becomes the published
// k8s.io/x at the release's v0 version.
func kubeWrapperGoMod(wd string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", "k8s.io/kubernetes@"+kubeVersion)
	cmd.Dir, cmd.Env = wd, append(proxyBuildEnv(os.Environ(), wd), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download k8s.io/kubernetes@%s: %v", kubeVersion, err)
	}
	var info struct{ GoMod, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Error != "" {
		return "", fmt.Errorf("go mod download k8s.io/kubernetes@%s: %v %s", kubeVersion, err, info.Error)
	}
	f, err := os.Open(info.GoMod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	staging := "v0." + strings.TrimPrefix(kubeVersion, "v1.")
	var b strings.Builder
	fmt.Fprintf(&b, "module kubewrapper\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n", kubeVersion)
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[1] == "=>" && strings.HasPrefix(fields[2], "./staging/") {
			fmt.Fprintf(&b, "\t%s => %s %s\n", fields[0], fields[0], staging)
			n++
		}
	}
	if n == 0 {
		return "", fmt.Errorf("no staging replace lines in %s", info.GoMod)
	}
	b.WriteString(")\n")
	return b.String(), sc.Err()
}

// TestKubeBuild builds (or finds cached) the cluster binaries and says how
// long the build took.
func TestKubeBuild(t *testing.T) {
	dir := kubeBin(t)
	if kubeTools.took > 0 {
		t.Logf("built kubernetes %s and etcd %s into %s in %s", kubeVersion, etcdVersion, dir, kubeTools.took.Round(time.Second))
	} else {
		t.Logf("kubernetes %s binaries cached in %s", kubeVersion, dir)
	}
}
