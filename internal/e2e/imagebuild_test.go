package e2e

// The action's packaging, built and run as GitHub does it, offline: no
// image can be pulled from a public registry here, so the harness prepares
// the two base images itself from what the machine has (its Go toolchain,
// busybox-static) and gives the Dockerfile a build context with vendor/.

import (
	"archive/tar"
	"bufio"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// RunnerImage is the job container image of the act tests: busybox-static
// on scratch, so `run:` steps have a shell (`sh`) and nothing is pulled.
const RunnerImage = "ghcr-pull-test/runner:busybox"

// testImageLabel marks the images this harness made, so it never replaces
// or removes a real image of the same name.
const testImageLabel = "org.ghcr-pull.test-image"

var (
	baseImagesOnce sync.Once
	baseImagesErr  error
)

// EnsureBaseImages makes RunnerImage and the Dockerfile's builder image
// (its GO_IMAGE default) in the runner's daemon, unless they exist. The
// builder is the machine's Go toolchain with busybox for RUN's /bin/sh and
// the machine's CA bundle, set to build from vendor/ with no network
// (GOPROXY=off, GOFLAGS=-mod=vendor).
func (e *Env) EnsureBaseImages(tb testing.TB) {
	tb.Helper()
	baseImagesOnce.Do(func() {
		baseImagesErr = e.ensureBaseImages()
		// The classic builder keeps each build stage as an untagged image
		// (~480 MB here); stages built on our builder carry its label, so
		// exactly those go at the end of the run.
		stoppers = append(stoppers, func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, _ = e.Docker.ImagePrune(ctx, client.ImagePruneOptions{
				Filters: client.Filters{}.Add("dangling", "true").Add("label", testImageLabel)})
		})
	})
	if baseImagesErr != nil {
		tb.Fatalf("preparing the base images: %v", baseImagesErr)
	}
}

func (e *Env) ensureBaseImages() error {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox not installed (scripts/test.sh installs busybox-static): %w", err)
	}
	if err := staticBinary(busybox); err != nil {
		return fmt.Errorf("%s cannot go into a FROM scratch image: %w (install busybox-static, which replaces the dynamic busybox)", busybox, err)
	}
	builder, err := e.BuilderImage()
	if err != nil {
		return err
	}
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return fmt.Errorf("go env GOROOT: %w", err)
	}
	goroot := strings.TrimSpace(string(out))
	images := []struct {
		ref     string
		changes []string
		files   func(tw *tar.Writer) error
	}{
		{RunnerImage, []string{"ENV PATH=/bin", `CMD ["sh"]`}, func(tw *tar.Writer) error { return busyboxTree(tw, busybox) }},
		{builder, []string{
			"ENV PATH=/usr/local/go/bin:/bin", "ENV HOME=/root", "ENV GOTOOLCHAIN=local",
			"ENV GOPROXY=off", "ENV GOFLAGS=-mod=vendor",
		}, func(tw *tar.Writer) error {
			if err := busyboxTree(tw, busybox); err != nil {
				return err
			}
			if err := addFile(tw, "/etc/ssl/certs/ca-certificates.crt", "etc/ssl/certs/ca-certificates.crt"); err != nil {
				return err
			}
			return addTree(tw, goroot, "usr/local/go", func(rel string) bool {
				// The tests, docs and API lists are not needed to build.
				top, _, _ := strings.Cut(rel, "/")
				return top == "test" || top == "doc" || top == "api" || top == "misc" || strings.HasSuffix(rel, "_test.go") || strings.Contains(rel, "/testdata/")
			})
		}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, img := range images {
		// Present already: ours from an earlier run, or a real image of
		// that name, which builds just as well.
		if _, err := e.Docker.ImageInspect(ctx, img.ref); err == nil {
			continue
		}
		if err := importImage(ctx, e.Docker, img.ref, append(img.changes, "LABEL "+testImageLabel+"=1"), img.files); err != nil {
			return fmt.Errorf("importing %s: %w", img.ref, err)
		}
	}
	return nil
}

// BuilderImage is the Dockerfile's default GO_IMAGE.
func (e *Env) BuilderImage() (string, error) {
	f, err := os.Open(filepath.Join(e.ModuleRoot, "Dockerfile"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "ARG GO_IMAGE="); ok {
			return v, nil
		}
	}
	return "", errors.New("the Dockerfile declares no ARG GO_IMAGE=<default>")
}

func importImage(ctx context.Context, cli *client.Client, ref string, changes []string, files func(*tar.Writer) error) error {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := files(tw)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	res, err := cli.ImageImport(ctx, client.ImageImportSource{Source: pr, SourceName: "-"}, ref, client.ImageImportOptions{Changes: changes})
	if err != nil {
		pr.CloseWithError(err)
		return err
	}
	defer res.Close()
	return daemonStreamError(res)
}

// daemonStreamError reads a JSON message stream and returns its first
// error, as the docker CLI would print it.
func daemonStreamError(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}

// busyboxTree writes /bin/busybox with a symlink per applet, /tmp and /root.
func busyboxTree(tw *tar.Writer, busybox string) error {
	for _, d := range []string{"bin/", "tmp/", "root/", "etc/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode}); err != nil {
			return err
		}
	}
	if err := addFile(tw, busybox, "bin/busybox"); err != nil {
		return err
	}
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}); err != nil {
			return err
		}
	}
	return nil
}

func addFile(tw *tar.Writer, src, name string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	hdr, err := tar.FileInfoHeader(fi, "")
	if err != nil {
		return err
	}
	hdr.Name = name
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// addTree writes root's files under prefix, leaving out what skip says.
func addTree(tw *tar.Writer, root, prefix string, skip func(rel string) bool) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if rel != "." && skip != nil && skip(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		name := prefix
		if rel != "." {
			name = prefix + "/" + rel
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
}

var (
	actionContextOnce sync.Once
	actionContextDir  string
	actionContextErr  error
)

// ActionContext is a copy of the repository as a checkout holds it (the
// files git tracks or would track), plus vendor/ written from the module
// cache, so that the Dockerfile builds with no network. It is made once
// per test process.
func (e *Env) ActionContext(tb testing.TB) string {
	tb.Helper()
	actionContextOnce.Do(func() { actionContextDir, actionContextErr = e.actionContext() })
	if actionContextErr != nil {
		tb.Fatalf("preparing the action's build context: %v", actionContextErr)
	}
	return actionContextDir
}

func (e *Env) actionContext() (string, error) {
	dir := filepath.Join(e.dir, "action-context")
	ls := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	ls.Dir = e.ModuleRoot
	out, err := ls.Output()
	if err != nil {
		return "", fmt.Errorf("git ls-files: %w", err)
	}
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if rel == "" {
			continue
		}
		src := filepath.Join(e.ModuleRoot, rel)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the work tree, or not a plain file
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return "", err
		}
		dst := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(dst, data, fi.Mode().Perm()); err != nil {
			return "", err
		}
	}
	// go mod vendor needs the modules of every platform (go-winio for
	// Windows, say), while a Linux build downloads only what it uses: on a
	// fresh machine the cache lacks them. Fetch them from the proxy first;
	// only then is vendoring itself offline.
	download := exec.Command("go", "mod", "download")
	download.Dir = e.ModuleRoot
	download.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := download.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go mod download: %v\n%s", err, out)
	}
	vendor := exec.Command("go", "mod", "vendor", "-o", filepath.Join(dir, "vendor"))
	vendor.Dir = e.ModuleRoot
	vendor.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
	if out, err := vendor.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go mod vendor: %v\n%s", err, out)
	}
	return dir, nil
}

// BuildActionImage builds the Dockerfile in contextDir as tag with the
// daemon's classic builder (what the runner and act use), without cache
// when noCache, and returns how long the build took.
func (e *Env) BuildActionImage(tb testing.TB, contextDir, tag string, noCache bool) time.Duration {
	tb.Helper()
	e.EnsureBaseImages(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := addTree(tw, contextDir, ".", nil)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	start := time.Now()
	res, err := e.Docker.ImageBuild(ctx, pr, client.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true, NoCache: noCache})
	if err != nil {
		tb.Fatalf("docker build: %v", err)
	}
	defer res.Body.Close()
	if err := daemonStreamError(res.Body); err != nil {
		tb.Fatalf("docker build of %s: %v", contextDir, err)
	}
	return time.Since(start)
}

// RunActionImage runs image as the GitHub runner starts a container action:
// `docker run --workdir /github/workspace`, one INPUT_<NAME> per input, the
// file-command variables pointing into /github/file_commands, the Docker
// socket and /github/{home,workflow,file_commands,workspace} mounted. The
// network is the host's, as the job's is on a hosted runner, so the
// loopback registry is reachable.
func (e *Env) RunActionImage(tb testing.TB, image string, inputs map[string]string) Result {
	tb.Helper()
	return e.RunActionImageOn(tb, image, inputs, "host", "")
}

// RunActionImageOn is RunActionImage with the container on network (the
// runner uses a job network of its own, not the host's) and workspace
// mounted at /github/workspace ("" for a fresh one).
func (e *Env) RunActionImageOn(tb testing.TB, image string, inputs map[string]string, network, workspace string) Result {
	tb.Helper()
	dir := tb.TempDir()
	mounts := map[string]string{"workspace": workspace}
	for _, m := range []string{"home", "workflow", "file_commands", "workspace"} {
		if mounts[m] != "" {
			continue
		}
		mounts[m] = filepath.Join(dir, m)
		if err := os.MkdirAll(mounts[m], 0o777); err != nil {
			tb.Fatal(err)
		}
	}
	files := map[string]string{"GITHUB_OUTPUT": "set_output", "GITHUB_STEP_SUMMARY": "step_summary", "GITHUB_ENV": "set_env", "GITHUB_STATE": "save_state"}
	env := []string{"GITHUB_ACTIONS=true", "HOME=/github/home", "RUNNER_TEMP=/tmp"}
	for v, f := range files {
		if err := os.WriteFile(filepath.Join(mounts["file_commands"], f), nil, 0o666); err != nil {
			tb.Fatal(err)
		}
		env = append(env, v+"=/github/file_commands/"+f)
	}
	for k, v := range inputs {
		env = append(env, "INPUT_"+strings.ToUpper(k)+"="+v)
	}
	binds := []string{"/var/run/docker.sock:/var/run/docker.sock"}
	for m, p := range mounts {
		binds = append(binds, p+":/github/"+m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	created, err := e.Docker.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:     &container.Config{Image: image, Env: env, WorkingDir: "/github/workspace"},
		HostConfig: &container.HostConfig{Binds: binds, NetworkMode: container.NetworkMode(network)},
	})
	if err != nil {
		tb.Fatalf("docker create %s: %v", image, err)
	}
	defer func() {
		_, _ = e.Docker.ContainerRemove(context.Background(), created.ID, client.ContainerRemoveOptions{Force: true})
	}()
	wait := e.Docker.ContainerWait(ctx, created.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := e.Docker.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		tb.Fatalf("docker start %s: %v", image, err)
	}
	var res Result
	select {
	case w := <-wait.Result:
		res.ExitCode = int(w.StatusCode)
	case err := <-wait.Error:
		tb.Fatalf("docker wait: %v", err)
	}
	res.Wall = time.Since(start)
	logs, err := e.Docker.ContainerLogs(ctx, created.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		tb.Fatalf("docker logs: %v", err)
	}
	defer logs.Close()
	var stdout, stderr strings.Builder
	if _, err := stdcopy.StdCopy(&stdout, &stderr, logs); err != nil {
		tb.Fatalf("reading the container's output: %v", err)
	}
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	res.readFileCommands(filepath.Join(mounts["file_commands"], files["GITHUB_OUTPUT"]),
		filepath.Join(mounts["file_commands"], files["GITHUB_STEP_SUMMARY"]))
	res.Home = mounts["home"]
	return res
}

// staticBinary fails for an executable that needs a dynamic loader: in an
// image with no /lib it would not start, and the act and image tests would
// fail far from the cause.
func staticBinary(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("it is dynamically linked")
		}
	}
	return nil
}
