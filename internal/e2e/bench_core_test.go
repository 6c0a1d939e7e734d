package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkPull compares one pull through ghcr-pull with `docker pull` of
// the same image on the same daemon, through the same token-auth registry,
// and the fallback path with a direct anonymous pull. Each op removes the
// image first (untimed), so every op downloads the 3 x 8 MiB layers.
// Reported: ns/op and registry requests/op (from the front's log).
//
//	go test ./internal/e2e -run '^$' -bench Pull -benchtime 10x -count 3
func BenchmarkPull(b *testing.B) {
	e := Start(b)
	if _, err := exec.LookPath("docker"); err != nil {
		skipOrFatal(b, "docker CLI not installed: %v", err)
	}
	const size, layers = 8 << 20, 3
	e.pushImage(b, "bench/public", "1", size, layers)
	e.Front.SetPublic("bench/public")
	e.pushImage(b, "bench/private", "1", size, layers)
	e.Front.AddUser("bencher", "bench-token", false, "bench/private")
	public, private := e.Host+"/bench/public:1", e.Host+"/bench/private:1"

	// docker pull with credentials needs `docker login`, which writes a
	// config.json: give it a throwaway one.
	dockerConfig := b.TempDir()
	login := exec.Command("docker", "--config", dockerConfig, "login", "-u", "bencher", "--password-stdin", e.Host)
	login.Stdin = strings.NewReader("bench-token")
	if out, err := login.CombinedOutput(); err != nil {
		b.Fatalf("docker login: %v\n%s", err, out)
	}

	dockerPull := func(ref string) func(b *testing.B) {
		return func(b *testing.B) {
			out, err := exec.Command("docker", "--config", dockerConfig, "pull", "-q", ref).CombinedOutput()
			if err != nil {
				b.Fatalf("docker pull: %v\n%s", err, out)
			}
		}
	}
	ghcrPullWith := func(env *Env, ref string, inputs map[string]string, wantMode string) func(b *testing.B) {
		return func(b *testing.B) {
			in := map[string]string{"image": ref, "summary": "false"}
			for k, v := range inputs {
				in[k] = v
			}
			res := env.RunAction(b, in)
			if res.ExitCode != 0 || res.Outputs["auth-mode"] != wantMode {
				b.Fatalf("exit %d auth-mode %q\n%s", res.ExitCode, res.Outputs["auth-mode"], res.Stdout)
			}
		}
	}
	ghcrPull := func(ref string, inputs map[string]string, wantMode string) func(b *testing.B) {
		return ghcrPullWith(e, ref, inputs, wantMode)
	}
	type benchCase struct {
		name, ref string
		op        func(b *testing.B)
	}
	token := map[string]string{"username": "bencher", "password": "bench-token"}
	cases := []benchCase{
		{"token/docker-pull", private, dockerPull(private)},
		{"token/ghcr-pull", private, ghcrPull(private, token, "token")},
	}
	if before := e.previousBuild(); before != nil {
		cases = append(cases, benchCase{"token/ghcr-pull-before", private, ghcrPullWith(before, private, token, "token")})
	}
	cases = append(cases,
		benchCase{"anonymous/docker-pull", public, dockerPull(public)},
		benchCase{"anonymous/ghcr-pull", public, ghcrPull(public, map[string]string{"auth": "anonymous"}, "anonymous")},
		benchCase{"fallback/ghcr-pull-rejected-token", public, ghcrPull(public, map[string]string{"username": "bencher", "password": "expired"}, "anonymous")},
	)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			requests := 0
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				e.RemoveLocalImage(b, c.ref)
				e.Front.ResetLog()
				b.StartTimer()
				c.op(b)
				b.StopTimer()
				requests += len(e.Front.Requests())
			}
			b.ReportMetric(float64(requests)/float64(b.N), "requests/op")
			e.RemoveLocalImage(b, c.ref)
		})
	}
	_ = os.RemoveAll(filepath.Join(dockerConfig, "config.json"))
}

// previousBuild returns an Env that runs the binary GHCR_PULL_BENCH_BEFORE
// names (an earlier build of ghcr-pull), so that one benchmark run holds the
// before and after figures side by side; nil when it is unset.
func (e *Env) previousBuild() *Env {
	bin := os.Getenv("GHCR_PULL_BENCH_BEFORE")
	if bin == "" {
		return nil
	}
	before := *e
	before.Binary = bin
	return &before
}
