package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkSSH compares pulling onto 1, 2 and 4 remote hosts with
// ghcr-pull (hosts in parallel, one SSH connection each, the Engine API
// tunnelled) against what users do today: a sequential shell loop of
// `ssh host docker pull`. "direct" is a plain `docker pull` against one
// remote daemon's socket with no SSH at all: the per-host floor;
// "ssh-parallel" starts `ssh host docker pull` on every host at once. With
// GHCR_PULL_BENCH_BEFORE naming an earlier build, "ghcr-pull-before" runs
// it beside the current one. requests/op is counted in the registry front.
//
//	go test ./internal/e2e -run '^$' -bench SSH -benchtime 5x -count 3
func BenchmarkSSH(b *testing.B) {
	e := Start(b)
	for _, tool := range []string{"ssh", "docker"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFatal(b, "%s not installed: %v", tool, err)
		}
	}
	hosts := make([]*RemoteHost, 4)
	for i := range hosts {
		hosts[i] = StartRemoteHost(b, fmt.Sprintf("bn%d", i), RemoteHostOptions{})
		if i > 0 {
			hosts[i].AuthorizeKey(b, hosts[0].ClientSigner().PublicKey())
		}
	}
	regAddr := hosts[0].ExposeOnHost(b, e.Host)
	// small: 3 x 256 KiB, latency-bound; large: 3 x 8 MiB, where 4 remote
	// daemons decompressing at once contend for this machine's 2 cores.
	sizes := []struct {
		name string
		size int64
	}{{"small", 256 << 10}, {"large", 8 << 20}}
	for _, sz := range sizes {
		e.pushImage(b, "bench/ssh-"+sz.name, "1", sz.size, 3)
		e.Front.SetPublic("bench/ssh-" + sz.name)
	}
	var ref string

	dir := b.TempDir()
	keyFile, khFile := filepath.Join(dir, "id"), filepath.Join(dir, "known_hosts")
	var known []string
	for _, h := range hosts {
		known = append(known, h.KnownHosts())
	}
	if err := os.WriteFile(keyFile, []byte(hosts[0].ClientKeyPEM()), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(khFile, []byte(strings.Join(known, "\n")+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	removeAll := func(hs []*RemoteHost) {
		for _, h := range hs {
			out, err := exec.Command("docker", "-H", "unix://"+h.DockerSocket(), "rmi", "-f", ref).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "No such image") {
				b.Fatalf("rmi on %s: %v %s", h.Name, err, out)
			}
		}
	}
	ghcrPullWith := func(env *Env) func(hs []*RemoteHost) {
		return func(hs []*RemoteHost) {
			var names []string
			for _, h := range hs {
				names = append(names, h.SSHHost())
			}
			res := env.RunAction(b, map[string]string{
				"image": ref, "auth": "anonymous", "summary": "false",
				"ssh-host": strings.Join(names, ","), "ssh-key": hosts[0].ClientKeyPEM(),
				"ssh-known-hosts": strings.Join(known, "\n"), "insecure-registry": regAddr,
			})
			if res.ExitCode != 0 {
				b.Fatalf("ghcr-pull exit %d\n%s", res.ExitCode, res.Stdout)
			}
		}
	}
	sshPull := func(h *RemoteHost) *exec.Cmd {
		return exec.Command("ssh", "-i", keyFile, "-o", "UserKnownHostsFile="+khFile, "-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes", h.SSHHost()[:strings.LastIndex(h.SSHHost(), ":")], "docker", "pull", "-q", ref)
	}
	sshLoop := func(hs []*RemoteHost) {
		for _, h := range hs {
			if out, err := sshPull(h).CombinedOutput(); err != nil {
				b.Fatalf("ssh docker pull on %s: %v\n%s", h.Name, err, out)
			}
		}
	}
	sshParallel := func(hs []*RemoteHost) {
		cmds := make([]*exec.Cmd, len(hs))
		outs := make([]strings.Builder, len(hs))
		for i, h := range hs {
			cmds[i] = sshPull(h)
			cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
			if err := cmds[i].Start(); err != nil {
				b.Fatal(err)
			}
		}
		for i, c := range cmds {
			if err := c.Wait(); err != nil {
				b.Fatalf("ssh docker pull on %s: %v\n%s", hs[i].Name, err, outs[i].String())
			}
		}
	}
	direct := func(hs []*RemoteHost) {
		out, err := exec.Command("docker", "-H", "unix://"+hs[0].DockerSocket(), "pull", "-q", ref).CombinedOutput()
		if err != nil {
			b.Fatalf("docker pull: %v\n%s", err, out)
		}
	}
	run := func(name string, hs []*RemoteHost, op func([]*RemoteHost)) {
		b.Run(name, func(b *testing.B) {
			requests := 0
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				removeAll(hs)
				e.Front.ResetLog()
				b.StartTimer()
				op(hs)
				b.StopTimer()
				requests += len(e.Front.Requests())
			}
			b.ReportMetric(float64(requests)/float64(b.N), "requests/op")
		})
	}
	for _, sz := range sizes {
		ref = regAddr + "/bench/ssh-" + sz.name + ":1"
		run(sz.name+"/hosts=1/direct-docker-pull", hosts[:1], direct)
		for _, n := range []int{1, 2, 4} {
			run(fmt.Sprintf("%s/hosts=%d/ghcr-pull", sz.name, n), hosts[:n], ghcrPullWith(e))
			if before := e.previousBuild(); before != nil {
				run(fmt.Sprintf("%s/hosts=%d/ghcr-pull-before", sz.name, n), hosts[:n], ghcrPullWith(before))
			}
			run(fmt.Sprintf("%s/hosts=%d/ssh-loop", sz.name, n), hosts[:n], sshLoop)
			if n > 1 {
				run(fmt.Sprintf("%s/hosts=%d/ssh-parallel", sz.name, n), hosts[:n], sshParallel)
			}
		}
	}
}
