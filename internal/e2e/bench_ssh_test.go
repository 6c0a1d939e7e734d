package e2e

import (
	"fmt"
	"os/exec"
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
	hosts := startFleet(b, "bn", 4, HostSpec{})
	ssh := newOpenSSH(b, hosts...)
	regAddr := hosts[0].ExposeOnHost(b, e.Host)
	pushBenchImages(b, e, "bench/ssh")
	var ref string
	removeAll := func(hs []*RemoteHost) {
		for _, h := range hs {
			out, err := exec.Command("docker", "-H", "unix://"+h.DockerSocket(), "rmi", "-f", ref).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "No such image") {
				b.Fatalf("rmi on %s: %v %s", h.Name, err, out)
			}
		}
	}
	ghcrPullWith := func(env *Env) func(hs []*RemoteHost) {
		return func(hs []*RemoteHost) { benchPull(b, env, ref, map[string]string{"insecure-registry": regAddr}, hs...) }
	}
	sshLoop := func(hs []*RemoteHost) {
		for _, h := range hs {
			ssh.run(b, h, "docker", "pull", "-q", ref)
		}
	}
	sshParallel := func(hs []*RemoteHost) { ssh.onAll(b, hs, "docker", "pull", "-q", ref) }
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
	for _, sz := range benchSizes {
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
