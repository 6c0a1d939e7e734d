package e2e

import (
	"archive/tar"
	"context"
	"io"
	"sort"
	"strings"
	"testing"

	"github.com/moby/moby/client"
)

// actionImageTag is the image TestActionImage and the packaging benchmark
// build from the Dockerfile.
const actionImageTag = "ghcr-pull-test/action:e2e"

// TestActionImage builds the Dockerfile as the runner does for `image:
// Dockerfile`, checks that the image holds the binary, the CA bundle and
// nothing else, and runs it with the runner's container-action contract.
func TestActionImage(t *testing.T) {
	e := Start(t)
	took := e.BuildActionImage(t, e.ActionContext(t), actionImageTag, false)
	t.Logf("docker build: %s", took)

	ctx := context.Background()
	inspect, err := e.Docker.ImageInspect(ctx, actionImageTag)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(inspect.Config.Entrypoint, " "); got != "/ghcr-pull" {
		t.Errorf("entrypoint %q, want /ghcr-pull", got)
	}
	t.Logf("image size %.1f MB", float64(inspect.Size)/1e6)

	t.Run("holds the binary, the CA bundle and nothing else", func(t *testing.T) {
		files := imageFiles(t, e, actionImageTag)
		want := []string{"etc/ssl/certs/ca-certificates.crt", "ghcr-pull"}
		if strings.Join(files, " ") != strings.Join(want, " ") {
			t.Errorf("image files %v, want %v", files, want)
		}
	})

	t.Run("runs as the runner starts a container action", func(t *testing.T) {
		digest := e.PushRandomImage(t, "image/public", "1")
		e.Front.SetPublic("image/public")
		res := e.RunActionImage(t, actionImageTag, map[string]string{
			"image": e.Host + "/image/public:1", "destination": "none", "username": "nobody", "password": "",
		})
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", res.ExitCode, res.Stdout, res.Stderr)
		}
		if res.Outputs["digest"] != digest || res.Outputs["auth-mode"] != "anonymous" {
			t.Errorf("outputs %v, want digest %s and auth-mode anonymous", res.Outputs, digest)
		}
		if !strings.Contains(res.Summary, "| Image |") {
			t.Errorf("summary has no table:\n%s", res.Summary)
		}
		t.Logf("docker run to exit: %s", res.Wall)
	})

	t.Run("bad input is an error annotation and exit 2, not a crash", func(t *testing.T) {
		res := e.RunActionImage(t, actionImageTag, map[string]string{"image": "", "destination": "none"})
		if res.ExitCode != 2 || !strings.Contains(res.Stdout, "::error") || strings.Contains(res.Stdout+res.Stderr, "goroutine") {
			t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", res.ExitCode, res.Stdout, res.Stderr)
		}
	})
}

// imageFiles lists the regular files of ref's filesystem, sorted.
func imageFiles(t *testing.T, e *Env, ref string) []string {
	t.Helper()
	ctx := context.Background()
	c, err := e.Docker.ContainerCreate(ctx, client.ContainerCreateOptions{Image: ref})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = e.Docker.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}) }()
	rc, err := e.Docker.ContainerExport(ctx, c.ID, client.ContainerExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var files []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		// The daemon adds its own mount points to every container.
		if h.Typeflag == tar.TypeReg && !strings.HasPrefix(h.Name, "etc/host") && h.Name != "etc/resolv.conf" &&
			!strings.HasPrefix(h.Name, ".dockerenv") && !strings.HasPrefix(h.Name, "dev/") {
			files = append(files, h.Name)
		}
	}
	sort.Strings(files)
	return files
}
