package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// busyboxEcho is a runnable image for this machine's platform: the
// machine's busybox-static, printing word when run.
func busyboxEcho(t *testing.T, word string) v1.Image {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		skipOrFatal(t, "busybox not installed (busybox-static): %v", err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	_ = tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data))})
	_, _ = tw.Write(data)
	_ = tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/bin/busybox", "echo", word}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// pushTwoPlatforms pushes an index of a runnable image for this machine
// and a random s390x one to repo:tag and returns the index digest.
func pushTwoPlatforms(t *testing.T, e *Env, repo, tag, word string) (string, v1.Image) {
	t.Helper()
	native := busyboxEcho(t, word)
	other, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := other.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "s390x"
	if other, err = mutate.ConfigFile(other, cf); err != nil {
		t.Fatal(err)
	}
	ii := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: native, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}})
	ref, err := name.ParseReference(e.Host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remoteWriteIndexAdmin(e, ref, ii); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	d, _ := ii.Digest()
	t.Cleanup(func() { e.RemoveLocalImage(t, ref.String()) })
	return d.String(), native
}

// TestFiles writes images as files through the real registry with token
// auth: an OCI layout read back with go-containerregistry, a tar that the
// machine's dockerd loads under the user's tag and runs, an anonymous
// fallback, a pinned digest when the tag moves after the probe, and a
// write cut short that leaves the path as it was. The password is never
// in the files.
func TestFiles(t *testing.T) {
	e := Start(t)
	if _, err := exec.LookPath("docker"); err != nil {
		skipOrFatal(t, "the docker CLI is not installed: %v", err)
	}
	e.Front.AddUser("filer", canary, false, "files/private", "files/pin", "files/cut")
	word := "loaded-" + randomHex(4)
	privDigest, native := pushTwoPlatforms(t, e, "files/private", "1", word)
	pubDigest, _ := pushTwoPlatforms(t, e, "files/public", "1", word)
	e.Front.SetPublic("files/public")
	nativeDigest, _ := native.Digest()

	run := func(t *testing.T, repo, password string, inputs map[string]string) (Result, string) {
		t.Helper()
		ws := t.TempDir()
		in := map[string]string{"image": e.Host + "/" + repo + ":1", "username": "filer", "password": password, "retries": "0"}
		for k, v := range inputs {
			in[k] = v
		}
		e.Front.SetReject(403, "")
		res := e.RunAction(t, in, "GITHUB_WORKSPACE="+ws)
		assertNoSecretLeak(t, res, password)
		_ = filepath.Walk(ws, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(canary)) {
					t.Errorf("the password is in %s", p)
				}
			}
			return nil
		})
		return res, ws
	}
	wantResult := func(t *testing.T, res Result, runtime, host, digest, fallback string) {
		t.Helper()
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		if len(rs) != 1 || rs[0]["runtime"] != runtime || rs[0]["host"] != host || rs[0]["digest"] != digest || rs[0]["pulled"] != true {
			t.Errorf("results %v, want runtime %s, host %s, digest %s, pulled", rs, runtime, host, digest)
		}
		if res.Outputs["fallback-used"] != fallback || res.Outputs["digest"] != digest {
			t.Errorf("fallback-used %q digest %q, want %s %s", res.Outputs["fallback-used"], res.Outputs["digest"], fallback, digest)
		}
	}
	loadAndRun := func(t *testing.T, archive, ref string) {
		t.Helper()
		e.RemoveLocalImage(t, ref)
		t.Cleanup(func() { e.RemoveLocalImage(t, ref) })
		if out, err := exec.Command("docker", "load", "-i", archive).CombinedOutput(); err != nil || !strings.Contains(string(out), ref) {
			t.Fatalf("docker load: %v\n%s", err, out)
		}
		out, err := exec.Command("docker", "run", "--rm", ref).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != word {
			t.Errorf("docker run %s: %v, printed %q, want %q", ref, err, out, word)
		}
	}

	t.Run("oci-layout keeps the index whole", func(t *testing.T) {
		res, ws := run(t, "files/private", canary, map[string]string{"destination": "oci-layout", "path": "images/layout"})
		wantResult(t, res, "oci-layout", "images/layout", privDigest, "false")
		ii, err := layout.ImageIndexFromPath(filepath.Join(ws, "images/layout"))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := ii.IndexManifest()
		if len(m.Manifests) != 1 || m.Manifests[0].Digest.String() != privDigest ||
			m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != e.Host+"/files/private:1" {
			t.Fatalf("index.json %+v, want one entry %s named by the tag", m.Manifests, privDigest)
		}
		child, err := ii.ImageIndex(m.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		cm, _ := child.IndexManifest()
		for _, d := range cm.Manifests {
			img, err := child.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			layers, _ := img.Layers()
			for _, l := range layers {
				rc, err := l.Compressed()
				if err == nil {
					_, err = io.Copy(io.Discard, rc)
					rc.Close()
				}
				if err != nil {
					t.Errorf("%s's layer: %v", d.Platform, err)
				}
			}
		}
	})

	t.Run("oci-layout narrowed to a platform", func(t *testing.T) {
		res, ws := run(t, "files/private", canary, map[string]string{"destination": "oci-layout", "path": "layout", "platform": "linux/" + runtime.GOARCH})
		wantResult(t, res, "oci-layout", "layout", privDigest, "false")
		ii, err := layout.ImageIndexFromPath(filepath.Join(ws, "layout"))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := ii.IndexManifest()
		if len(m.Manifests) != 1 || m.Manifests[0].Digest != nativeDigest {
			t.Errorf("index.json %+v, want this platform's image %s", m.Manifests, nativeDigest)
		}
	})

	t.Run("tar loads into dockerd and runs", func(t *testing.T) {
		res, ws := run(t, "files/private", canary, map[string]string{"destination": "tar", "path": "app.tar"})
		wantResult(t, res, "tar", "app.tar", privDigest, "false")
		loadAndRun(t, filepath.Join(ws, "app.tar"), e.Host+"/files/private:1")
	})

	t.Run("rejected credentials fall back to anonymous", func(t *testing.T) {
		res, ws := run(t, "files/public", "wrong-"+canary, map[string]string{"destination": "tar", "path": "app.tar"})
		wantResult(t, res, "tar", "app.tar", pubDigest, "true")
		loadAndRun(t, filepath.Join(ws, "app.tar"), e.Host+"/files/public:1")
	})

	t.Run("the tag moves after the probe: the file holds the probed digest", func(t *testing.T) {
		probed := e.PushRandomImage(t, "files/pin", "1")
		var moved string
		e.Front.ResetLog()
		e.Front.Inject(ghcrsim.Fault{Match: "/v2/files/pin/manifests/1", After: func() { moved = e.PushRandomImage(t, "files/pin", "1") }})
		res, ws := run(t, "files/pin", canary, map[string]string{"destination": "oci-layout", "path": "pin"})
		if moved == "" || moved == probed {
			t.Fatalf("the tag did not move (probed %s, moved %s)", probed, moved)
		}
		wantResult(t, res, "oci-layout", "pin", probed, "false")
		ii, err := layout.ImageIndexFromPath(filepath.Join(ws, "pin"))
		if err != nil {
			t.Fatal(err)
		}
		m, _ := ii.IndexManifest()
		if len(m.Manifests) != 1 || m.Manifests[0].Digest.String() != probed {
			t.Errorf("index.json %+v, want the probed %s, not the moved %s", m.Manifests, probed, moved)
		}
	})

	t.Run("a write cut short leaves the path as it was", func(t *testing.T) {
		e.PushRandomImage(t, "files/cut", "1")
		for _, c := range []struct {
			dest, timeout string
			fault         ghcrsim.Fault
		}{
			{"tar", "", ghcrsim.Fault{Match: "/blobs/sha256:", Reset: true}},
			{"oci-layout", "", ghcrsim.Fault{Match: "/blobs/sha256:", Reset: true}},
			// The step's timeout ends the write in the middle.
			{"tar", "4s", ghcrsim.Fault{Match: "/blobs/sha256:", Stall: 15 * time.Second}},
			{"oci-layout", "4s", ghcrsim.Fault{Match: "/blobs/sha256:", Stall: 15 * time.Second}},
		} {
			dest := c.dest
			e.Front.ResetLog()
			e.Front.Inject(c.fault)
			ws := t.TempDir()
			old := filepath.Join(ws, "out")
			if dest == "tar" {
				if err := os.WriteFile(old, []byte("yesterday's archive"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			in := map[string]string{"image": e.Host + "/files/cut:1", "username": "filer", "password": canary, "retries": "0", "destination": dest, "path": "out"}
			if c.timeout != "" {
				in["timeout"] = c.timeout
			}
			res := e.RunAction(t, in, "GITHUB_WORKSPACE="+ws)
			if res.ExitCode != 1 || e.Front.Pending() != 0 {
				t.Fatalf("%s: exit %d, want 1, with the fault hit (%d pending)\n%s", dest, res.ExitCode, e.Front.Pending(), res.Stdout)
			}
			ents, _ := os.ReadDir(ws)
			switch {
			case dest == "tar" && (len(ents) != 1 || ents[0].Name() != "out"):
				t.Errorf("%s: the workspace holds %v, want only the old archive", dest, ents)
			case dest == "oci-layout" && len(ents) != 0:
				t.Errorf("%s: the workspace holds %v, want nothing", dest, ents)
			}
			if b, _ := os.ReadFile(old); dest == "tar" && string(b) != "yesterday's archive" {
				t.Errorf("the old archive changed: %q", b)
			}
			assertNoSecretLeak(t, res, canary)
		}
	})
}

func remoteWriteIndexAdmin(e *Env, ref name.Reference, ii v1.ImageIndex) error {
	return remote.WriteIndex(ref, ii, remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}))
}
