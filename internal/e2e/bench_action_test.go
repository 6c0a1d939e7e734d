package e2e

import (
	"context"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"

	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// BenchmarkActionPackaging measures what the action's packaging costs a
// job: the start-up of the action image for `destination: none` (docker
// run to exit, against the bare binary as the floor), and the per-job cost
// of `image: Dockerfile` (a build with no cache, as on a fresh hosted
// runner) against a prebuilt `docker://` image (a pull from the registry,
// the image removed before each op). Image size is reported as metrics:
// image-MB as the daemon stores it, pull-MB as the registry serves it
// (compressed layers).
//
//	go test ./internal/e2e -run '^$' -bench ActionPackaging -benchtime 3x -count 2
func BenchmarkActionPackaging(b *testing.B) {
	e := Start(b)
	e.BuildActionImage(b, e.ActionContext(b), actionImageTag, false)
	e.PushRandomImage(b, "bench/pkg", "1")
	e.Front.SetPublic("bench/pkg")
	inputs := map[string]string{"image": e.Host + "/bench/pkg:1", "destination": "none", "password": "", "summary": "false"}

	ctx := context.Background()
	inspect, err := e.Docker.ImageInspect(ctx, actionImageTag)
	if err != nil {
		b.Fatal(err)
	}
	imageMB := float64(inspect.Size) / 1e6

	// The prebuilt image, as the release workflow publishes it.
	prebuilt := e.Host + "/ghcr-pull/ghcr-pull:bench"
	auth, err := docker.RegistryAuth(registryauth.Credentials{Mode: registryauth.ModeToken, Username: e.AdminUser, Password: e.AdminPassword})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.Docker.ImageTag(ctx, client.ImageTagOptions{Source: actionImageTag, Target: prebuilt}); err != nil {
		b.Fatal(err)
	}
	push, err := e.Docker.ImagePush(ctx, prebuilt, client.ImagePushOptions{RegistryAuth: auth})
	if err == nil {
		err = push.Wait(ctx)
		push.Close()
	}
	if err != nil {
		b.Fatalf("pushing %s: %v", prebuilt, err)
	}
	ref, err := name.ParseReference(prebuilt)
	if err != nil {
		b.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithAuth(&authn.Basic{Username: e.AdminUser, Password: e.AdminPassword}))
	if err != nil {
		b.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		b.Fatal(err)
	}
	var pullBytes int64
	for _, l := range m.Layers {
		pullBytes += l.Size
	}
	pullMB := float64(pullBytes) / 1e6
	report := func(b *testing.B) {
		b.ReportMetric(imageMB, "image-MB")
		b.ReportMetric(pullMB, "pull-MB")
	}

	b.Run("start/binary", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if res := e.RunAction(b, inputs); res.ExitCode != 0 {
				b.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
			}
		}
	})
	b.Run("start/docker-run", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if res := e.RunActionImage(b, actionImageTag, inputs); res.ExitCode != 0 {
				b.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
			}
		}
		report(b)
	})
	b.Run("job/prebuilt-pull+run", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			// By ID, so every tag of it goes and the pull transfers every
			// layer, as on a fresh runner.
			if in, err := e.Docker.ImageInspect(ctx, prebuilt); err == nil {
				e.RemoveLocalImage(b, in.ID)
			}
			b.StartTimer()
			pr, err := e.Docker.ImagePull(ctx, prebuilt, client.ImagePullOptions{RegistryAuth: auth})
			if err == nil {
				err = pr.Wait(ctx)
				pr.Close()
			}
			if err != nil {
				b.Fatalf("pulling %s: %v", prebuilt, err)
			}
			if res := e.RunActionImage(b, prebuilt, inputs); res.ExitCode != 0 {
				b.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
			}
		}
		report(b)
	})
	b.Run("job/dockerfile-build+run", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			e.BuildActionImage(b, e.ActionContext(b), "ghcr-pull-test/action:bench-build", true)
			if res := e.RunActionImage(b, "ghcr-pull-test/action:bench-build", inputs); res.ExitCode != 0 {
				b.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
			}
		}
		report(b)
	})
}
