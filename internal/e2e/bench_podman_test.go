package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
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
	if _, err := exec.LookPath("ssh"); err != nil {
		skipOrFatal(b, "ssh not installed: %v", err)
	}
	p := StartRemoteHost(b, "bp", RemoteHostOptions{Kind: WithPodman})
	regAddr := p.ExposeOnHost(b, e.Host)
	sizes := []struct {
		name string
		size int64
	}{{"small", 256 << 10}, {"large", 8 << 20}}
	for _, sz := range sizes {
		pushNodeImage(b, e, "bench/pm-"+sz.name, "1", sz.size, 3)
		e.Front.SetPublic("bench/pm-" + sz.name)
	}
	dir := b.TempDir()
	keyFile, khFile := filepath.Join(dir, "id"), filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(keyFile, []byte(p.ClientKeyPEM()), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(khFile, []byte(p.KnownHosts()), 0o600); err != nil {
		b.Fatal(err)
	}
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
	ghcrPull := func() {
		res := e.RunAction(b, map[string]string{
			"image": ref, "auth": "anonymous", "summary": "false",
			"ssh-host": p.SSHHost(), "ssh-key": p.ClientKeyPEM(), "ssh-known-hosts": p.KnownHosts(),
			"insecure-registry": regAddr,
		})
		if res.ExitCode != 0 {
			b.Fatalf("ghcr-pull exit %d\n%s", res.ExitCode, res.Stdout)
		}
	}
	sshPodman := func() {
		out, err := exec.Command("ssh", "-i", keyFile, "-o", "UserKnownHostsFile="+khFile, "-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes", p.User()+"@"+p.IP(), "podman", "pull", "-q", ref).CombinedOutput()
		if err != nil {
			b.Fatalf("ssh podman pull: %v\n%s", err, out)
		}
	}
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
	for _, sz := range sizes {
		ref = regAddr + "/bench/pm-" + sz.name + ":1"
		run(sz.name+"/ghcr-pull", ghcrPull)
		run(sz.name+"/ssh-podman-pull", sshPodman)
	}
	empty()
}
