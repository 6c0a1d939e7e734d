package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkKubeAuth: the time from the step's start (the binary started)
// to its first request to the API server, for each kube-auth form against
// a static kubeconfig, each op a whole pre-pull through the binary. A
// proxy in front of the API server notes the first request. The cloud
// APIs are the loopback fakes, so the figures are ghcr-pull's own cost
// (the ID token request, the exchanges, the describe call, the presign),
// not a cloud's latency.
//
//	go test ./internal/e2e -run '^$' -bench KubeAuth -benchtime 5x
func BenchmarkKubeAuth(b *testing.B) {
	c := StartCluster(b)
	e := Start(b)
	ca, err := os.ReadFile(filepath.Join(c.Dir, "pki", "apiserver.crt"))
	if err != nil {
		b.Fatal(err)
	}
	proxy := newAPIProxy(b, c.Server, ca, 0)
	const ns = "prepull-bench-auth"
	forms := keylessForms(b, c, ns, proxy.URL, []byte(proxy.caPEM()))
	forms["kubeconfig"] = []string{"kubeconfig", strings.Replace(c.Kubeconfig(c.AdminToken), c.Server, proxy.URL, 1)}
	pushNodeImage(b, e, "bench/kube-auth", "1", 256<<10, 1)
	e.Front.SetPublic("bench/kube-auth")
	for _, form := range []string{"kubeconfig", "eks", "gke", "aks", "oidc"} {
		b.Run(form, func(b *testing.B) {
			inputs := map[string]string{"image": e.Host + "/bench/kube-auth:1", "auth": "anonymous", "destination": "kubernetes",
				"kube-namespace": ns, "kube-node-selector": "kubernetes.io/hostname=" + c.Node}
			kv := forms[form]
			for i := 0; i < len(kv); i += 2 {
				inputs[kv[i]] = kv[i+1]
			}
			var first, wall time.Duration
			for range b.N {
				proxy.firstSince(time.Now()) // forget earlier requests
				start := time.Now()
				res := e.RunAction(b, inputs, c.Keyless.CloudEnv()...)
				if res.ExitCode != 0 {
					b.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
				}
				first += proxy.firstSince(start)
				wall += res.Wall
			}
			b.ReportMetric(float64(first.Microseconds())/1000/float64(b.N), "ms-to-first-api-call/op")
			b.ReportMetric(float64(wall.Microseconds())/1000/float64(b.N), "ms-step/op")
		})
	}
}
