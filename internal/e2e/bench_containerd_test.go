package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// BenchmarkContainerd compares pulling onto a containerd host with
// ghcr-pull (CRI PullImage over the SSH connection, remote-runtime left at
// auto) against what an operator would run on the node: `ctr images pull`
// over SSH, into the same k8s.io namespace, unpacked for the same
// snapshotter. "direct-ctr" is the same ctr command against the node's
// socket with no SSH at all: the floor. Every op starts with the node's
// k8s.io namespace emptied and garbage-collected (untimed), so every op
// downloads and unpacks all layers.
//
//	go test ./internal/e2e -run '^$' -bench Containerd -benchtime 5x -count 3
func BenchmarkContainerd(b *testing.B) {
	e := Start(b)
	n := StartRemoteHost(b, "bc", HostSpec{Kind: WithContainerd})
	ssh := newOpenSSH(b, n)
	regAddr := n.ExposeOnHost(b, e.Host)
	pushBenchImages(b, e, "bench/ctrd")
	var ref string
	ghcrPull := func() { benchPull(b, e, ref, map[string]string{"insecure-registry": regAddr}, n) }
	// ctr on the node reaches the registry over plain HTTP by --plain-http
	// (the CRI plugin by the hosts.toml of nshost_containerd_test.go).
	sshCtr := func() { ssh.run(b, n, "ctr", "-n", "k8s.io", "images", "pull", "--plain-http", ref) }
	directCtr := func() {
		n.Ctr(b, "-n", "k8s.io", "images", "pull", "--plain-http", ref)
	}
	nsCtr := func() {
		out, err := exec.Command("nsenter", "--net=/var/run/netns/"+n.Namespace, "ctr", "--address", n.ContainerdSocket(), "-n", "k8s.io", "images", "pull", "--plain-http", ref).CombinedOutput()
		if err != nil {
			b.Fatalf("%v %s", err, out)
		}
	}
	sshTrue := func() {
		ssh.run(b, n, "true")
		directCtr()
	}
	run := func(name string, op func()) {
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				emptyK8sIO(b, n)
				b.StartTimer()
				op()
			}
			b.StopTimer()
			// Each way ends with the image in k8s.io, unpacked.
			if check := n.Ctr(b, "-n", "k8s.io", "images", "check"); !strings.Contains(check, ref) || !strings.Contains(check, "true") {
				b.Fatalf("%s: image not there unpacked:\n%s", name, check)
			}
		})
	}
	for _, sz := range benchSizes {
		ref = regAddr + "/bench/ctrd-" + sz.name + ":1"
		run(sz.name+"/direct-ctr", directCtr)
		run(sz.name+"/ghcr-pull", ghcrPull)
		run(sz.name+"/ssh-ctr", sshCtr)
		run(sz.name+"/ns-ctr", nsCtr)
		run(sz.name+"/ssh-true+direct", sshTrue)
	}
}

// emptyK8sIO removes every image of h's k8s.io namespace and checks that
// containerd's garbage collection took their snapshots: the next pull
// downloads and unpacks every layer.
func emptyK8sIO(b *testing.B, h *RemoteHost) {
	refs := strings.Fields(h.Ctr(b, "-n", "k8s.io", "images", "ls", "-q"))
	if len(refs) > 0 {
		h.Ctr(b, append([]string{"-n", "k8s.io", "images", "rm", "--sync"}, refs...)...)
	}
	if snaps := h.Ctr(b, "-n", "k8s.io", "snapshots", "--snapshotter", ContainerdSnapshotter, "ls"); strings.Contains(snaps, "Committed") {
		b.Fatalf("snapshots left on %s after removing every image:\n%s", h.Name, snaps)
	}
}
