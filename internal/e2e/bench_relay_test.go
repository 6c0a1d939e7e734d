package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/moby/client"
)

// BenchmarkRelay puts ssh-transfer: relay beside the routes users have
// (issue 23), on Docker hosts and on containerd hosts (the kind axis,
// relayBenchKinds). Each op runs every route once, in an order rotating
// from op to op (interleave), so relay and what it is compared with share
// the machine's load; each route reports <route>-s/op and its figures.
//
//   - fresh/hosts=1: one host with no image, relay against a direct pull by
//     the host (ssh-transfer: direct: dockerd's pull, CRI PullImage);
//     relay/direct is the wall ratio;
//
//   - update: one layer of 1 MiB changed on top of 2 × 4 MiB, relay against
//     the archive route (`docker save | ssh host docker load`, `ctr images
//     export | ssh host ctr images import`, the archive made on another
//     host that pulled the new image); <route>/relay is how many times
//     faster relay is; sent-bytes/op is what travelled to the host (the
//     relay's relayed_bytes; the archive's size), sent/changed over the
//     changed layer;
//
//   - fresh/hosts=4 (Docker): four fresh hosts at once, relay against direct
//     pulls and against `ssh h docker pull` on the four at once (the hosts
//     reach the registry); blob-gets/op counts the registry's blob GETs,
//     upstream/image the blob bytes it answered, in images.
//
// Every case runs over each of benchLinks: loopback, where a round trip
// is free and routes compare by the work they give the machine's 2
// cores, and a modelled wide-area network (10 ms round trips between the
// runner, the registry and each host), where they also compare by the
// round trips they make.
//
// With GHCR_PULL_BENCH_BEFORE naming an earlier build, "relay-before"
// runs it as one more route. The machine's load average is printed before
// and after each kind. docs/benchmarks.md gives the command.
func BenchmarkRelay(b *testing.B) {
	e := Start(b)
	for _, k := range relayBenchKinds {
		b.Run(k.name, func(b *testing.B) {
			logLoad(b, "before")
			defer logLoad(b, "after")
			benchRelayKind(b, e, k)
		})
	}
}

// relayBenchKind is one kind of host in BenchmarkRelay: how to start and
// empty one, and the archive route a user runs today.
type relayBenchKind struct {
	name  string
	spec  HostSpec
	hosts int // 4 runs the fleet case
	empty func(b *testing.B, h *RemoteHost)
	// archive names the archive route; export writes ref's image from h's
	// runtime to stdout (run here, against h's socket), load reads it on
	// the target host (run there over ssh).
	archive string
	export  func(h *RemoteHost, ref string) *exec.Cmd
	load    []string
}

var relayBenchKinds = []relayBenchKind{
	{
		name: "docker", hosts: 4, empty: emptyDockerd,
		archive: "save-load",
		export: func(h *RemoteHost, ref string) *exec.Cmd {
			return exec.Command("docker", "-H", "unix://"+h.DockerSocket(), "save", ref)
		},
		load: []string{"docker", "load", "-q"},
	},
	{
		name: "containerd", spec: HostSpec{Kind: WithContainerd}, hosts: 2, empty: emptyK8sIO,
		archive: "export-import",
		export: func(h *RemoteHost, ref string) *exec.Cmd {
			return exec.Command("ctr", "--address", h.ContainerdSocket(), "-n", "k8s.io", "images", "export", "-", ref)
		},
		load: []string{"ctr", "-n", "k8s.io", "images", "import", "--snapshotter", ContainerdSnapshotter, "-"},
	},
}

// logLoad prints the machine's load average beside the figures, which are
// read against it (on stdout: a parent benchmark's log is not shown).
func logLoad(b *testing.B, when string) {
	load, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("%s: load average %s: %s\n", b.Name(), when, strings.TrimSpace(string(load)))
}

// emptyDockerd removes every image of h's dockerd.
func emptyDockerd(b *testing.B, h *RemoteHost) {
	imgs, err := h.Docker().ImageList(context.Background(), client.ImageListOptions{All: true})
	if err != nil {
		b.Fatal(err)
	}
	for _, img := range imgs.Items {
		if _, err := h.Docker().ImageRemove(context.Background(), img.ID, client.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			b.Fatalf("rmi on %s: %v", h.Name, err)
		}
	}
}

func benchRelayKind(b *testing.B, e *Env, k relayBenchKind) {
	hosts := startFleet(b, "brl"+k.name[:1], k.hosts, k.spec)
	ssh := newOpenSSH(b, hosts...)
	freshImg, err := random.Image(4<<20, 3)
	if err != nil {
		b.Fatal(err)
	}
	freshImg = withPlatform(b, freshImg)
	freshRef, _ := name.ParseReference(e.Host + "/bench/relay:1")
	e.pushImageAs(b, freshRef, freshImg)
	// sizes: the fresh image's blobs, to count the bytes fetched upstream.
	sizes := map[string]int64{}
	if m, err := freshImg.Manifest(); err == nil {
		sizes[m.Config.Digest.String()] = m.Config.Size
		for _, l := range m.Layers {
			sizes[l.Digest.String()] = l.Size
		}
	}
	e.Front.SetPublic("bench/relay")
	e.Front.SetPublic("bench/relay-update")
	before := e.previousBuild()
	var imageBytes int64
	for _, n := range sizes {
		imageBytes += n
	}

	for _, link := range benchLinks {
		b.Run(link.name, func(b *testing.B) {
			n := newBenchNet(b, e, link, hosts)
			r := relayBench{e: e, k: k, hosts: hosts, n: n, ssh: ssh.over(b, n, hosts...), before: before,
				sizes: sizes, imageBytes: imageBytes}
			r.run(b)
		})
	}
}

// relayBench is one kind of host's cases over one network (benchNet).
type relayBench struct {
	e          *Env
	k          relayBenchKind
	hosts      []*RemoteHost
	n          benchNet
	ssh        openSSH
	before     *Env             // the earlier build, or nil
	sizes      map[string]int64 // the fresh image's blobs
	imageBytes int64
}

func (r relayBench) run(b *testing.B) {
	e, k, hosts, n, ssh, before, sizes, imageBytes := r.e, r.k, r.hosts, r.n, r.ssh, r.before, r.sizes, r.imageBytes
	action := func(b *testing.B, env *Env, ref, transfer string, hs ...*RemoteHost) Result {
		in := n.inputs(hs)
		in["ssh-transfer"], in["insecure-registry"] = transfer, n.registry
		return benchPull(b, env, ref, in, hs...)
	}
	blobGets := func() int {
		n := 0
		for _, q := range e.Front.Requests() {
			if q.Method == "GET" && strings.Contains(q.Path, "/blobs/") {
				n++
			}
		}
		return n
	}
	// upstreamBytes: the fresh image's blob bytes the registry answered.
	upstreamBytes := func() int64 {
		var n int64
		for _, q := range e.Front.Requests() {
			if q.Method == "GET" && q.Status == 200 && strings.Contains(q.Path, "/blobs/") {
				n += sizes[q.Path[strings.LastIndex(q.Path, "/")+1:]]
			}
		}
		return n
	}
	fresh := n.registry + "/bench/relay:1"
	// sshPulls is the baseline the issue names: `ssh h docker pull` on
	// every host at once, each host's dockerd fetching from the registry.
	sshPulls := func(b *testing.B, hs ...*RemoteHost) { ssh.onAll(b, hs, "docker", "pull", "-q", fresh) }
	// relayRoutes: this build's relay and, with GHCR_PULL_BENCH_BEFORE, the
	// earlier build's.
	relayRoutes := func(run func(b *testing.B, env *Env)) []benchRoute {
		rs := []benchRoute{{name: "relay", run: func(b *testing.B) { run(b, e) }}}
		if before != nil {
			rs = append(rs, benchRoute{name: "relay-before", run: func(b *testing.B) { run(b, before) }})
		}
		return rs
	}
	for _, n := range []int{1, 4} {
		if n > k.hosts {
			continue
		}
		hs := hosts[:n]
		routes := relayRoutes(func(b *testing.B, env *Env) { action(b, env, fresh, "relay", hs...) })
		routes = append(routes, benchRoute{name: "direct", run: func(b *testing.B) { action(b, e, fresh, "direct", hs...) }})
		if n > 1 {
			routes = append(routes, benchRoute{name: "ssh-docker-pull", run: func(b *testing.B) { sshPulls(b, hs...) }})
		}
		for i := range routes {
			routes[i].prepare = func(b *testing.B) {
				for _, h := range hs {
					k.empty(b, h)
				}
				e.Front.ResetLog()
			}
			routes[i].measure = func(b *testing.B) map[string]float64 {
				return map[string]float64{"blob-gets/op": float64(blobGets()), "upstream/image": float64(upstreamBytes()) / float64(imageBytes)}
			}
		}
		b.Run(fmt.Sprintf("fresh/hosts=%d", n), func(b *testing.B) { interleave(b, routes, false) })
	}

	// update: hosts[0] holds the previous version; hosts[1] pulls the new
	// one directly, as the runner's daemon would for docker save.
	base, err := random.Image(4<<20, 2)
	if err != nil {
		b.Fatal(err)
	}
	base = withPlatform(b, base)
	update := n.registry + "/bench/relay-update:1"
	var changed int64
	next := func(b *testing.B) {
		layer, err := random.Layer(1<<20, types.DockerLayer)
		if err != nil {
			b.Fatal(err)
		}
		img, err := mutate.AppendLayers(base, layer)
		if err != nil {
			b.Fatal(err)
		}
		ref, _ := name.ParseReference(e.Host + "/bench/relay-update:1")
		e.pushImageAs(b, ref, img)
		changed, _ = layer.Size()
	}
	k.empty(b, hosts[0])
	k.empty(b, hosts[1])
	next(b)
	action(b, e, update, "relay", hosts[0])
	// archive: export on hosts[1] | ssh hosts[0] load, the bytes piped.
	var sent int64
	archive := func(b *testing.B) {
		export := k.export(hosts[1], update)
		load := ssh.command(hosts[0], k.load...)
		out, err := export.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		var exportErr strings.Builder
		export.Stderr = &exportErr
		in, err := load.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		var loadOut strings.Builder
		load.Stdout, load.Stderr = &loadOut, &loadOut
		if err := export.Start(); err != nil {
			b.Fatal(err)
		}
		if err := load.Start(); err != nil {
			b.Fatal(err)
		}
		sent, err = io.Copy(in, out)
		in.Close()
		if err != nil {
			b.Fatal(err)
		}
		if err := export.Wait(); err != nil {
			b.Fatalf("%s export: %v\n%s", k.name, err, exportErr.String())
		}
		if err := load.Wait(); err != nil {
			b.Fatalf("ssh %s: %v\n%s", strings.Join(k.load, " "), err, loadOut.String())
		}
	}
	routes := relayRoutes(func(b *testing.B, env *Env) {
		res := action(b, env, update, "relay", hosts[0])
		var rs []struct {
			RelayedBytes int64 `json:"relayed_bytes"`
		}
		if err := json.Unmarshal([]byte(res.Outputs["results"]), &rs); err != nil || len(rs) != 1 {
			b.Fatalf("results %q: %v", res.Outputs["results"], err)
		}
		sent = rs[0].RelayedBytes
	})
	for i := range routes {
		routes[i].prepare = next
	}
	routes = append(routes, benchRoute{name: k.archive, run: archive, prepare: func(b *testing.B) {
		next(b)
		action(b, e, update, "direct", hosts[1])
	}})
	for i := range routes {
		routes[i].measure = func(b *testing.B) map[string]float64 {
			return map[string]float64{"sent-bytes/op": float64(sent), "sent/changed": float64(sent) / float64(changed)}
		}
	}
	b.Run("update", func(b *testing.B) { interleave(b, routes, true) })
}

// benchRoute is one way of doing a benchmark's op.
type benchRoute struct {
	name    string
	prepare func(b *testing.B) // untimed, before run
	run     func(b *testing.B)
	// measure, untimed after run, returns figures of the op to report
	// per route (averaged over the ops).
	measure func(b *testing.B) map[string]float64
}

// interleave runs every route once per op, in an order that rotates from
// op to op, so that routes compared see the same machine (a shared
// machine's load changes from minute to minute). It reports each route's
// mean wall time (<route>-s/op) and figures, and the first route's time
// against each other route's: relay/<route> (fresh), or <route>/relay,
// how many times faster the first is (speedup). ns/op is the sum.
func interleave(b *testing.B, routes []benchRoute, speedup bool) {
	took := make([]time.Duration, len(routes))
	sums := make([]map[string]float64, len(routes))
	for i := range sums {
		sums[i] = map[string]float64{}
	}
	b.StopTimer()
	for op := range b.N {
		for j := range routes {
			k := (op + j) % len(routes)
			r := routes[k]
			if r.prepare != nil {
				r.prepare(b)
			}
			start := time.Now()
			b.StartTimer()
			r.run(b)
			b.StopTimer()
			took[k] += time.Since(start)
			if r.measure != nil {
				for m, v := range r.measure(b) {
					sums[k][m] += v
				}
			}
		}
	}
	n := float64(b.N)
	for k, r := range routes {
		b.ReportMetric(took[k].Seconds()/n, r.name+"-s/op")
		for m, v := range sums[k] {
			b.ReportMetric(v/n, r.name+"-"+m)
		}
		if k == 0 {
			continue
		}
		if speedup {
			b.ReportMetric(float64(took[k])/float64(took[0]), r.name+"/"+routes[0].name)
		} else {
			b.ReportMetric(float64(took[0])/float64(took[k]), routes[0].name+"/"+r.name)
		}
	}
}
