package pull

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// slowTarget is a Docker-like target whose inspection and pull take the
// given times (an SSH round trip, a pull). Asked by digest before a pull
// it lacks every image (each op pulls); after the pull it reports the
// digest under the user's tag.
type slowTarget struct {
	inspect, pull time.Duration
	mu            sync.Mutex
	pulled        map[string]string // repository → digest
}

func (d *slowTarget) Pull(_ context.Context, ref string, _ *ocispec.Platform, _ registryauth.Credentials, _ func(int64, int64)) (bool, error) {
	time.Sleep(d.pull)
	repo, dg, _ := strings.Cut(ref, "@")
	d.mu.Lock()
	d.pulled[repo] = dg
	d.mu.Unlock()
	return true, nil
}

func (d *slowTarget) Tag(context.Context, string, string) error { return nil }

func (d *slowTarget) Inspect(_ context.Context, ref string) (image.Info, error) {
	time.Sleep(d.inspect)
	repo := ref[:strings.LastIndex(ref, ":")]
	d.mu.Lock()
	dg, ok := d.pulled[repo]
	d.mu.Unlock()
	if strings.Contains(ref, "@") || !ok {
		return image.Info{}, fmt.Errorf("no image %s", ref)
	}
	return image.Info{RepoDigests: image.ParseRepoDigests([]string{repo + "@" + dg})}, nil
}

// BenchmarkQuotaGuard is the cost of quota-guard: with it on, every image
// is probed (and each target asked whether it holds the image) before
// any target pulls; off, each image's pulls start as soon as its own
// probe ends. A fleet of 3 Docker targets (inspection 5 ms, pull 100 ms),
// 1 and 6 images, 3 images at a time (the default), against the test
// front answering Docker Hub's ratelimit headers, each request delayed
// 20 ms (a registry across the internet).
func BenchmarkQuotaGuard(b *testing.B) {
	reg := startSim(b)
	reg.front.SetHeaders("/manifests/", http.Header{"Ratelimit-Limit": {"100000;w=21600"}, "Ratelimit-Remaining": {"99999;w=21600"},
		"Docker-Ratelimit-Source": {"203.0.113.7"}})
	var inputs []string
	for i := range 6 {
		img, _ := random.Image(64, 1)
		repo := "library/app" + strconv.Itoa(i)
		reg.push(b, repo+":1", img)
		reg.front.SetPublic(repo)
		inputs = append(inputs, reg.host+"/"+repo+":1")
	}
	delayed := reg.srv.Config.Handler
	reg.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		delayed.ServeHTTP(w, r)
	})
	for _, n := range []int{1, 6} {
		images, err := ParseImages(inputs[:n])
		if err != nil {
			b.Fatal(err)
		}
		for _, guard := range []bool{false, true} {
			b.Run(fmt.Sprintf("images=%d/targets=3/guard=%v", n, guard), func(b *testing.B) {
				var targets []Target
				for i := range 3 {
					d := &slowTarget{inspect: 5 * time.Millisecond, pull: 100 * time.Millisecond, pulled: map[string]string{}}
					targets = append(targets, Target{Name: "host" + strconv.Itoa(i), Open: func(context.Context) (Daemon, error) { return d, nil }})
				}
				reg.front.ResetLog()
				for b.Loop() {
					for _, r := range Run(context.Background(), images, targets, Options{Credentials: registryauth.Anonymous, QuotaGuard: guard}) {
						if r.Err != nil {
							b.Fatal(r.Err)
						}
					}
				}
				b.ReportMetric(float64(len(reg.front.Requests()))/float64(b.N), "requests/op")
			})
		}
	}
}
