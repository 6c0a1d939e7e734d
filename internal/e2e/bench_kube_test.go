package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/kube"
)

// BenchmarkKube compares the time to "image on every node" (clean-up
// included) of ghcr-pull's destination kubernetes with what users do
// today: `kubectl create secret docker-registry`, `kubectl apply` of an
// equivalent pre-puller DaemonSet (the image as an init container, pause as
// the main one), `kubectl rollout status`, `kubectl delete`. Each op starts
// with the image removed from the node's containerd (untimed), so each op
// pulls. api-calls/op: kube.Prepull's own count, and kubectl's requests
// (its -v=6 log).
//
//	go test ./internal/e2e -run '^$' -bench Kube -benchtime 3x -count 3
func BenchmarkKube(b *testing.B) {
	c := StartCluster(b)
	e := Start(b)
	password := "kbench-" + canary
	e.Front.AddUser("kbench", password, false, "bench/kube")
	pause, err := name.ParseReference(e.Host + "/kube/pause:e2e")
	if err != nil {
		b.Fatal(err)
	}
	base, err := remote.Image(pause)
	if err != nil {
		b.Fatal(err)
	}
	layer, _ := random.Layer(8<<20, "application/vnd.docker.image.rootfs.diff.tar.gzip")
	img, _ := mutate.AppendLayers(base, layer)
	ref, _ := name.ParseReference(e.Host + "/bench/kube:1")
	if err := remoteWriteAdmin(e, ref, img); err != nil {
		b.Fatal(err)
	}
	digest, _ := img.Digest()
	pinned := ref.Context().Digest(digest.String()).String()

	dir := b.TempDir()
	kubeconfig := c.Kubeconfig(c.AdminToken)
	kcFile := filepath.Join(dir, "kubeconfig") // the baseline's; test credentials only
	if err := os.WriteFile(kcFile, []byte(kubeconfig), 0o600); err != nil {
		b.Fatal(err)
	}
	ds := fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata: {name: bench-prepuller, namespace: default}
spec:
  selector: {matchLabels: {app: bench-prepuller}}
  template:
    metadata: {labels: {app: bench-prepuller}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 0
      imagePullSecrets: [{name: bench-pull}]
      nodeSelector: {kubernetes.io/hostname: %s}
      initContainers:
      - {name: pull, image: %q, imagePullPolicy: Always, command: [/bin/busybox, "true"]}
      containers:
      - {name: pause, image: %q, command: [/bin/busybox, sleep, "2147483647"]}
`, c.Node, pinned, pause.String())
	dsFile := filepath.Join(dir, "ds.yaml")
	if err := os.WriteFile(dsFile, []byte(ds), 0o600); err != nil {
		b.Fatal(err)
	}
	kubectl := filepath.Join(kubeBin(b), "kubectl")
	requestLine := regexp.MustCompile(`(?m)"Response" verb="|\b(GET|POST|PUT|PATCH|DELETE) https://`)
	run := func(args ...string) int {
		out, err := exec.Command(kubectl, append([]string{"--kubeconfig", kcFile, "-v=6"}, args...)...).CombinedOutput()
		if err != nil {
			b.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, lastLinesOf(string(out), 10))
		}
		return len(requestLine.FindAllString(string(out), -1))
	}
	removeFromNode := func() {
		conn, err := grpc.NewClient("unix://"+c.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = runtimeapi.NewImageServiceClient(conn).RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: pinned}})
	}
	cases := []struct {
		name string
		op   func(b *testing.B) int // API calls
	}{
		{"ghcr-pull", func(b *testing.B) int {
			res := e.RunAction(b, map[string]string{"image": ref.String(), "username": "kbench", "password": password, "summary": "false",
				"destination": "kubernetes", "kubeconfig": kubeconfig, "kube-node-selector": "kubernetes.io/hostname=" + c.Node})
			if res.ExitCode != 0 {
				b.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
			}
			return 0
		}},
		{"kube.Prepull", func(b *testing.B) int {
			cfg, err := kube.ParseConfig(kubeconfig, "", "default", "kubernetes.io/hostname="+c.Node, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			res, err := kube.Prepull(context.Background(), cfg, pinned, &kube.PullAuth{Registry: e.Host, Username: "kbench", Password: password}, nil)
			if err != nil || len(res.Nodes) != 1 || res.Nodes[0].Err != nil {
				b.Fatalf("prepull: %v %+v", err, res.Nodes)
			}
			return res.APICalls
		}},
		{"kubectl-apply+rollout-status", func(b *testing.B) int {
			n := run("create", "secret", "docker-registry", "bench-pull", "--docker-server="+e.Host, "--docker-username=kbench", "--docker-password="+password)
			n += run("apply", "-f", dsFile)
			n += run("rollout", "status", "daemonset/bench-prepuller", "--timeout=120s")
			n += run("delete", "daemonset/bench-prepuller", "secret/bench-pull", "--wait=true")
			return n
		}},
	}
	for _, cs := range cases {
		b.Run(cs.name, func(b *testing.B) {
			calls := 0
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				removeFromNode()
				b.StartTimer()
				calls += cs.op(b)
			}
			b.StopTimer()
			if calls > 0 {
				b.ReportMetric(float64(calls)/float64(b.N), "api-calls/op")
			}
		})
	}
}
