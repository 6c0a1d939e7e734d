package e2e

import (
	"context"
	"testing"

	"github.com/moby/moby/client"
)

// BenchmarkPodman compares pulling onto a rootful Podman host with
// ghcr-pull (Podman's Docker-compatible API over the SSH connection,
// remote-runtime left at auto) against what an operator would run:
// `ssh h podman pull <ref>`, into the same storage (the session has the
// host's CONTAINERS_* environment). Every op starts with the image removed
// from Podman (untimed), so every op downloads all layers.
//
//	go test ./internal/e2e -run '^$' -bench Podman -benchtime 5x -count 3
func BenchmarkPodman(b *testing.B) {
	e := Start(b)
	p := StartRemoteHost(b, "bp", HostSpec{Kind: WithPodman})
	ssh := newOpenSSH(b, p)
	regAddr := p.ExposeOnHost(b, e.Host)
	pushBenchImages(b, e, "bench/pm")
	cli, err := p.Podman()
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	var ref string
	empty := func() {
		list, err := cli.ImageList(context.Background(), client.ImageListOptions{All: true})
		if err != nil {
			b.Fatal(err)
		}
		for _, img := range list.Items {
			if _, err := cli.ImageRemove(context.Background(), img.ID, client.ImageRemoveOptions{Force: true}); err != nil {
				b.Fatal(err)
			}
		}
	}
	ghcrPull := func() { benchPull(b, e, ref, map[string]string{"insecure-registry": regAddr}, p) }
	sshPodman := func() { ssh.run(b, p, "podman", "pull", "-q", ref) }
	run := func(name string, op func()) {
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				empty()
				b.StartTimer()
				op()
			}
			b.StopTimer()
			if podmanImageID(b, p, ref) == "" {
				b.Fatalf("%s: %s not in Podman", name, ref)
			}
		})
	}
	for _, sz := range benchSizes {
		ref = regAddr + "/bench/pm-" + sz.name + ":1"
		run(sz.name+"/ghcr-pull", ghcrPull)
		run(sz.name+"/ssh-podman-pull", sshPodman)
	}
	empty()
}
