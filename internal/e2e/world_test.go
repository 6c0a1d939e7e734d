// Package e2e holds ghcr-pull's end-to-end tests and the one harness they
// share: a real dockerd, a real docker-registry with token auth behind the
// GHCR-like front of internal/ghcrsim, the built binary run with the GitHub
// runner's environment contract, and (nshost_test.go) remote hosts in
// network namespaces with their own sshd and dockerd. Servers start once per
// test process. Where one cannot start, tests skip, except with CI=true,
// where they fail.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// Env is the started world.
type Env struct {
	Front *ghcrsim.Server
	// Host is the registry as clients name it: 127.0.0.1:<port>.
	Host          string
	Docker        *client.Client
	Binary        string
	AdminUser     string
	AdminPassword string
	// ModuleRoot is the repository's root directory.
	ModuleRoot string
	dir        string
}

var (
	startOnce sync.Once
	started   *Env
	startErr  error
	stoppers  []func()
)

// Start returns the shared Env, starting its servers on first use.
func Start(tb testing.TB) *Env {
	tb.Helper()
	startOnce.Do(func() { started, startErr = start() })
	if startErr != nil {
		skipOrFatal(tb, "end-to-end servers unavailable: %v", startErr)
	}
	return started
}

// Shutdown stops what Start started (TestMain calls it).
func Shutdown() {
	for i := len(stoppers) - 1; i >= 0; i-- {
		stoppers[i]()
	}
}

func start() (*Env, error) {
	for _, tool := range []string{"dockerd", "docker-registry", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not installed (run ./scripts/test.sh, which installs docker.io and docker-registry)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "ghcr-pull-e2e-")
	if err != nil {
		return nil, err
	}
	ownPath(dir)
	stoppers = append(stoppers, func() { os.RemoveAll(dir) })
	e := &Env{dir: dir, AdminUser: "admin", AdminPassword: randomHex(12)}

	if e.ModuleRoot, err = moduleRoot(); err != nil {
		return nil, err
	}
	if e.Docker, err = ensureDockerd(dir); err != nil {
		return nil, err
	}
	if err := e.startRegistry(); err != nil {
		return nil, err
	}
	e.Binary = filepath.Join(dir, "ghcr-pull")
	build := exec.Command("go", "build", "-o", e.Binary, ".")
	build.Dir = e.ModuleRoot
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building ghcr-pull: %v\n%s", err, out)
	}
	return e, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the ghcr-pull module")
	}
	return filepath.Dir(mod), nil
}

// ensureDockerd uses the machine's dockerd, starting one when none answers.
func ensureDockerd(dir string) (*client.Client, error) {
	cli, err := client.New(client.WithHost("unix:///var/run/docker.sock"), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, err
	}
	ping := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		return err
	}
	if ping() == nil {
		return cli, nil
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("no Docker daemon answers and starting one needs root")
	}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("dockerd")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting dockerd: %w", err)
	}
	stoppers = append(stoppers, func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	if waitUntil(60*time.Second, 500*time.Millisecond, func() (bool, error) { return ping() == nil, nil }) == nil {
		return cli, nil
	}
	log, _ := os.ReadFile(logf.Name())
	return nil, fmt.Errorf("dockerd did not answer within 60s:\n%s", lastLinesOf(string(log), 20))
}

// startRegistry runs docker-registry with token auth on a loopback port and
// the front on another; clients only ever see the front.
func (e *Env) startRegistry() error {
	front, host, stop, err := startTokenRegistry(filepath.Join(e.dir, "registry"))
	if err != nil {
		return err
	}
	stoppers = append(stoppers, stop)
	e.Front, e.Host = front, host
	e.Front.AddUser(e.AdminUser, e.AdminPassword, true, "*")
	return nil
}

// startTokenRegistry runs a docker-registry with token auth whose only
// door is a ghcrsim front on a loopback port (host), keeping its files in
// dir; stop ends both.
func startTokenRegistry(dir string) (front *ghcrsim.Server, host string, stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", nil, err
	}
	frontL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	regPort, err := freePort()
	if err != nil {
		frontL.Close()
		return nil, "", nil, err
	}
	backend, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", regPort))
	front, err = ghcrsim.New(ghcrsim.Options{Backend: backend})
	if err != nil {
		frontL.Close()
		return nil, "", nil, err
	}
	host = frontL.Addr().String()

	certPath := filepath.Join(dir, "token.crt")
	if err := os.WriteFile(certPath, front.RootCertPEM(), 0o644); err != nil {
		frontL.Close()
		return nil, "", nil, err
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
auth:
  token:
    realm: http://%s/token
    service: %s
    issuer: %s
    rootcertbundle: %s
`, filepath.Join(dir, "data"), regPort, host, front.Service(), front.Issuer(), certPath)
	cfgPath := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		frontL.Close()
		return nil, "", nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		frontL.Close()
		return nil, "", nil, err
	}
	cmd := exec.Command("docker-registry", "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		frontL.Close()
		logf.Close()
		return nil, "", nil, fmt.Errorf("starting docker-registry: %w", err)
	}
	srv := &http.Server{Handler: front}
	go func() { _ = srv.Serve(frontL) }()
	stop = func() {
		_ = srv.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	}

	up := waitUntil(20*time.Second, 100*time.Millisecond, func() (bool, error) {
		resp, err := http.Get("http://" + host + "/v2/")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusUnauthorized, nil
	})
	if up == nil {
		return front, host, stop, nil
	}
	stop()
	log, _ := os.ReadFile(logf.Name())
	return nil, "", nil, fmt.Errorf("docker-registry did not come up:\n%s", lastLinesOf(string(log), 20))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func lastLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PushRandomImage pushes a random image (3 layers of 256 KiB) to
// Host/repo:tag as the admin and returns its digest.
func (e *Env) PushRandomImage(tb testing.TB, repo, tag string) string {
	tb.Helper()
	return e.pushImage(tb, repo, tag, 256<<10, 3)
}

func (e *Env) pushImage(tb testing.TB, repo, tag string, layerSize int64, layers int64) string {
	tb.Helper()
	ref, err := name.ParseReference(e.Host + "/" + repo + ":" + tag)
	if err != nil {
		tb.Fatal(err)
	}
	img, err := random.Image(layerSize, layers)
	if err != nil {
		tb.Fatal(err)
	}
	return e.pushImageAs(tb, ref, img)
}

// pushImageAs pushes img to ref as the admin and returns its digest.
func (e *Env) pushImageAs(tb testing.TB, ref name.Reference, img v1.Image) string {
	tb.Helper()
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword})); err != nil {
		tb.Fatalf("pushing %s: %v", ref, err)
	}
	d, _ := img.Digest()
	// Whatever test pulls it into the runner's daemon, it goes at the
	// end: the suite leaves no image behind (leaks_test.go checks).
	tb.Cleanup(func() {
		e.RemoveLocalImage(tb, ref.String())
		e.RemoveLocalImage(tb, ref.Context().Digest(d.String()).String())
	})
	return d.String()
}

// RemoveLocalImage removes ref from the runner's daemon, if present.
func (e *Env) RemoveLocalImage(tb testing.TB, ref string) {
	tb.Helper()
	_, _ = e.Docker.ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true, PruneChildren: true})
}

// LocalImageDigests returns the RepoDigests of ref in the runner's daemon,
// or nil when it is absent.
func (e *Env) LocalImageDigests(tb testing.TB, ref string) []string {
	tb.Helper()
	res, err := e.Docker.ImageInspect(context.Background(), ref)
	if err != nil {
		return nil
	}
	return res.RepoDigests
}

// Result is what one run of the binary left behind.
type Result struct {
	ExitCode int
	Stdout   string
	Stderr   string
	Outputs  map[string]string
	// OutputFile is GITHUB_OUTPUT's raw content.
	OutputFile string
	Summary    string
	// Home and Temp are the run's HOME and TMPDIR, for secret scans.
	Home string
	Temp string
	// Wall is the run's duration; MaxRSSKiB its peak resident memory.
	Wall      time.Duration
	MaxRSSKiB int64
}

// RunAction runs the binary as the GitHub runner starts a container action:
// GITHUB_ACTIONS=true, one INPUT_<NAME> per input, the file-command
// variables, a fresh HOME and TMPDIR. extraEnv adds KEY=VALUE pairs.
func (e *Env) RunAction(tb testing.TB, inputs map[string]string, extraEnv ...string) Result {
	tb.Helper()
	dir := tb.TempDir()
	files := map[string]string{}
	for _, v := range []string{"GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ENV", "GITHUB_STATE"} {
		files[v] = filepath.Join(dir, strings.ToLower(v))
		if err := os.WriteFile(files[v], nil, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	home, tmp := filepath.Join(dir, "home"), filepath.Join(dir, "tmp")
	_ = os.MkdirAll(home, 0o755)
	_ = os.MkdirAll(tmp, 0o755)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "TMPDIR=" + tmp, "RUNNER_TEMP=" + tmp, "GITHUB_ACTIONS=true"}
	for k, v := range files {
		env = append(env, k+"="+v)
	}
	for k, v := range inputs {
		env = append(env, "INPUT_"+strings.ToUpper(k)+"="+v)
	}
	env = append(env, extraEnv...)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Binary)
	cmd.Env = env
	cmd.Dir = dir
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	var peakKiB int64
	err := cmd.Start()
	if err == nil {
		// Not the wait4 rusage: Go starts children with CLONE_VM, and the
		// kernel carries the parent's high-water RSS into the child's
		// maxrss at exec, so a large test process (a cluster client, built
		// images) would be measured instead of the binary. VmHWM belongs
		// to the binary's own address space.
		stop := make(chan struct{})
		polled := make(chan struct{})
		go func() {
			defer close(polled)
			t := time.NewTicker(10 * time.Millisecond)
			defer t.Stop()
			for {
				if kib := vmHWM(cmd.Process.Pid); kib > peakKiB {
					peakKiB = kib
				}
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		err = cmd.Wait()
		close(stop)
		<-polled
	}
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), Home: home, Temp: tmp, Wall: time.Since(start), MaxRSSKiB: peakKiB}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.ExitCode = exit.ExitCode()
	case err != nil:
		tb.Fatalf("running ghcr-pull: %v", err)
	}
	res.readFileCommands(files["GITHUB_OUTPUT"], files["GITHUB_STEP_SUMMARY"])
	return res
}

// readFileCommands fills the outputs and the summary from the run's
// GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files.
func (r *Result) readFileCommands(outputFile, summaryFile string) {
	out, _ := os.ReadFile(outputFile)
	r.OutputFile = string(out)
	r.Outputs = ParseOutputs(r.OutputFile)
	sum, _ := os.ReadFile(summaryFile)
	r.Summary = string(sum)
}

// ParseOutputs reads a GITHUB_OUTPUT file as the runner does: name=value
// lines and name<<DELIMITER heredocs.
func ParseOutputs(data string) map[string]string {
	out := map[string]string{}
	lines := strings.Split(data, "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if l == "" {
			continue
		}
		if n, delim, ok := strings.Cut(l, "<<"); ok && !strings.Contains(n, "=") {
			var val []string
			for i++; i < len(lines) && lines[i] != delim; i++ {
				val = append(val, lines[i])
			}
			out[n] = strings.Join(val, "\n")
			continue
		}
		if n, v, ok := strings.Cut(l, "="); ok {
			out[n] = v
		}
	}
	return out
}

// vmHWM is a live process's peak resident set in KiB (0 once it is gone).
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kib
		}
	}
	return 0
}
