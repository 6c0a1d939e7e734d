package e2e

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
)

// TestAct runs testdata/act/pull.yml through act, the way GitHub runs a
// workflow: the action comes from `uses: ./` (the real action.yml, the
// Dockerfile built by the daemon), its outputs reach a later step and a
// later job, and its warning reaches the log.
func TestAct(t *testing.T) {
	e := Start(t)
	act := toolBinary(t, "act", "github.com/nektos/act@v0.2.89")
	e.EnsureBaseImages(t)

	e.Front.AddUser("act-deployer", canary, false, "act/private")
	e.Front.SetReject(403, "")
	privateDigest := e.PushRandomImage(t, "act/private", "1")
	publicDigest := e.PushRandomImage(t, "act/public", "1")
	e.Front.SetPublic("act/public")
	for _, r := range []string{"act/private:1", "act/public:1"} {
		e.RemoveLocalImage(t, e.Host+"/"+r)
	}

	ws := filepath.Join(t.TempDir(), "repo")
	if out, err := exec.Command("cp", "-a", e.ActionContext(t), ws).CombinedOutput(); err != nil {
		t.Fatalf("copying the workspace: %v\n%s", err, out)
	}
	wf, err := os.ReadFile(filepath.Join(e.ModuleRoot, "testdata", "act", "pull.yml"))
	if err != nil {
		t.Fatal(err)
	}
	wfPath := filepath.Join(ws, ".github", "workflows", "act-e2e.yml")
	if err := os.MkdirAll(filepath.Dir(wfPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wfPath, wf, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"init", "-q"}, {"remote", "add", "origin", "https://github.com/ghcr-pull/ghcr-pull"}} {
		git := exec.Command("git", args...)
		git.Dir = ws
		if out, err := git.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}

	home := t.TempDir()
	// act asks which runner image to use unless an .actrc says it.
	if err := os.WriteFile(filepath.Join(home, ".actrc"), []byte("-P ubuntu-latest="+RunnerImage+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// --reuse keeps the job containers, so the fallback job's summary (its
	// last step's) can be read after the run; they are removed below.
	cmd := exec.CommandContext(ctx, act, "push", "-W", wfPath, "--pull=false", "--reuse",
		"-P", "ubuntu-latest="+RunnerImage,
		"--var", "REGISTRY="+e.Host, "--var", "REGISTRY_USER=act-deployer",
		// -s NAME reads the value from the environment: no secret on a
		// command line.
		"-s", "REGISTRY_PASSWORD", "-s", "REJECTED_PASSWORD")
	cmd.Dir = ws
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"REGISTRY_PASSWORD="+canary, "REJECTED_PASSWORD=wrong-"+canary)
	start := time.Now()
	outb, runErr := cmd.CombinedOutput()
	log := string(outb)
	t.Logf("act ran %s", time.Since(start).Round(time.Millisecond))
	defer removeActContainers(t, e)
	if runErr != nil {
		t.Fatalf("act: %v\n%s", runErr, lastLinesOf(log, 120))
	}

	imageRef := regexp.MustCompile(`token-job image-ref=(\S+)`).FindStringSubmatch(log)
	for _, want := range []string{
		"token-job auth-mode=token fallback-used=false",
		"token-job digest=" + privateDigest,
		"fallback-job auth-mode=anonymous fallback-used=true",
		"fallback-job image-ref=" + e.Host + "/act/public@" + publicDigest,
		"credentials rejected",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("act's log lacks %q:\n%s", want, lastLinesOf(log, 120))
		}
	}
	if imageRef == nil || imageRef[1] != e.Host+"/act/private@"+privateDigest {
		t.Errorf("token job's image-ref = %v, want %s/act/private@%s", imageRef, e.Host, privateDigest)
	}
	if !regexp.MustCompile(`(?m)::warning|⚠|warning.*credentials rejected`).MatchString(log) {
		t.Errorf("no warning annotation in act's log")
	}
	if !contains(e.LocalImageDigests(t, e.Host+"/act/private:1"), e.Host+"/act/private@"+privateDigest) {
		t.Errorf("the token job's image is not in the daemon with digest %s", privateDigest)
	}
	if strings.Contains(log, canary) {
		t.Errorf("the secret appears in act's log")
	}

	summary := actJobFile(t, e, "fallback", "/var/run/act/workflow/SUMMARY.md")
	for _, want := range []string{"| Image |", "act/public:1", "anonymous", publicDigest} {
		if !strings.Contains(summary, want) {
			t.Errorf("the fallback job's summary lacks %q:\n%s", want, summary)
		}
	}
}

// actJobFile reads path from the job container act kept for job.
func actJobFile(t *testing.T, e *Env, job, path string) string {
	t.Helper()
	ctx := context.Background()
	list, err := e.Docker.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list.Items {
		for _, n := range c.Names {
			if strings.HasPrefix(n, "/act-") && strings.Contains(n, "-"+job+"-") && !strings.Contains(n, "-pull") {
				rc, err := e.Docker.CopyFromContainer(ctx, c.ID, client.CopyFromContainerOptions{SourcePath: path})
				if err != nil {
					t.Fatalf("reading %s from %s: %v", path, n, err)
				}
				defer rc.Content.Close()
				tr := tar.NewReader(rc.Content)
				if _, err := tr.Next(); err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(tr)
				return string(b)
			}
		}
	}
	t.Fatalf("act kept no container for job %s", job)
	return ""
}

// removeActContainers removes the job containers and volumes --reuse kept.
func removeActContainers(t *testing.T, e *Env) {
	ctx := context.Background()
	list, err := e.Docker.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return
	}
	for _, c := range list.Items {
		for _, n := range c.Names {
			if strings.HasPrefix(n, "/act-act-e2e-") {
				_, _ = e.Docker.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			}
		}
	}
	vols, err := e.Docker.VolumeList(ctx, client.VolumeListOptions{})
	if err != nil {
		return
	}
	for _, v := range vols.Items {
		if strings.HasPrefix(v.Name, "act-act-e2e-") {
			_, _ = e.Docker.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true})
		}
	}
}
