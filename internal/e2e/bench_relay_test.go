package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/moby/client"
)

// BenchmarkRelay puts ssh-transfer: relay beside the routes users have
// (issue 23), side by side in one run:
//
//   - fresh: one host with no image, relay against a direct pull by the
//     host (ssh-transfer: direct);
//
//   - update: one layer of 1 MiB changed on top of 2 × 4 MiB, relay against
//     `docker save | ssh host docker load` (the save from another host's
//     daemon that has the new image); sent-bytes/op is what travelled to
//     the host (the relay's relayed_bytes; the archive's size);
//
//   - hosts=4: four fresh hosts at once, relay against direct pulls;
//     blob-gets/op counts the registry's blob GETs.
//
//     go test ./internal/e2e -run '^$' -bench Relay -benchtime 3x
func BenchmarkRelay(b *testing.B) {
	e := Start(b)
	for _, tool := range []string{"ssh", "docker"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFatal(b, "%s not installed: %v", tool, err)
		}
	}
	hosts := make([]*RemoteHost, 4)
	for i := range hosts {
		hosts[i] = StartRemoteHost(b, fmt.Sprintf("brl%d", i), RemoteHostOptions{})
		if i > 0 {
			hosts[i].AuthorizeKey(b, hosts[0].ClientSigner().PublicKey())
		}
	}
	regAddr := hosts[0].ExposeOnHost(b, e.Host)
	e.pushImage(b, "bench/relay", "1", 4<<20, 3)
	e.Front.SetPublic("bench/relay")
	e.Front.SetPublic("bench/relay-update")
	var known []string
	for _, h := range hosts {
		known = append(known, h.KnownHosts())
	}
	action := func(b *testing.B, ref, transfer string, hs ...*RemoteHost) Result {
		var names []string
		for _, h := range hs {
			names = append(names, h.SSHHost())
		}
		res := e.RunAction(b, map[string]string{
			"image": ref, "auth": "anonymous", "summary": "false", "ssh-transfer": transfer,
			"ssh-host": strings.Join(names, ","), "ssh-key": hosts[0].ClientKeyPEM(),
			"ssh-known-hosts": strings.Join(known, "\n"), "insecure-registry": regAddr,
		})
		if res.ExitCode != 0 {
			b.Fatalf("ghcr-pull (%s) exit %d\n%s", transfer, res.ExitCode, res.Stdout)
		}
		return res
	}
	wipe := func(b *testing.B, hs ...*RemoteHost) {
		for _, h := range hs {
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

	fresh := regAddr + "/bench/relay:1"
	for _, n := range []int{1, 4} {
		for _, transfer := range []string{"relay", "direct"} {
			b.Run(fmt.Sprintf("fresh/hosts=%d/%s", n, transfer), func(b *testing.B) {
				gets := 0
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					wipe(b, hosts[:n]...)
					e.Front.ResetLog()
					b.StartTimer()
					action(b, fresh, transfer, hosts[:n]...)
					b.StopTimer()
					gets += blobGets()
				}
				b.ReportMetric(float64(gets)/float64(b.N), "blob-gets/op")
			})
		}
	}

	// update: hosts[0] holds the previous version; hosts[1] pulls the new
	// one directly, as the runner's daemon would for docker save.
	base, err := random.Image(4<<20, 2)
	if err != nil {
		b.Fatal(err)
	}
	update := regAddr + "/bench/relay-update:1"
	next := func(b *testing.B) int64 {
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
		size, _ := layer.Size()
		return size
	}
	wipe(b, hosts[0], hosts[1])
	next(b)
	action(b, update, "relay", hosts[0])
	dir := b.TempDir()
	keyFile, khFile := filepath.Join(dir, "id"), filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(keyFile, []byte(hosts[0].ClientKeyPEM()), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(khFile, []byte(strings.Join(known, "\n")+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	saveLoad := func(b *testing.B) int64 {
		save := exec.Command("docker", "-H", "unix://"+hosts[1].DockerSocket(), "save", update)
		load := exec.Command("ssh", "-i", keyFile, "-o", "UserKnownHostsFile="+khFile, "-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes", hosts[0].SSHHost()[:strings.LastIndex(hosts[0].SSHHost(), ":")], "docker", "load", "-q")
		out, err := save.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		in, err := load.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		var loadOut strings.Builder
		load.Stdout, load.Stderr = &loadOut, &loadOut
		if err := save.Start(); err != nil {
			b.Fatal(err)
		}
		if err := load.Start(); err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(in, out)
		in.Close()
		if err != nil {
			b.Fatal(err)
		}
		if err := save.Wait(); err != nil {
			b.Fatalf("docker save: %v", err)
		}
		if err := load.Wait(); err != nil {
			b.Fatalf("ssh docker load: %v\n%s", err, loadOut.String())
		}
		return n
	}
	for _, route := range []string{"relay", "save-load"} {
		b.Run("update/"+route, func(b *testing.B) {
			var sent, changed int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				changed += next(b)
				if route == "save-load" {
					action(b, update, "direct", hosts[1])
				}
				b.StartTimer()
				if route == "relay" {
					res := action(b, update, "relay", hosts[0])
					b.StopTimer()
					var rs []struct {
						RelayedBytes int64 `json:"relayed_bytes"`
					}
					if err := json.Unmarshal([]byte(res.Outputs["results"]), &rs); err != nil || len(rs) != 1 {
						b.Fatalf("results %q: %v", res.Outputs["results"], err)
					}
					sent += rs[0].RelayedBytes
				} else {
					sent += saveLoad(b)
					b.StopTimer()
				}
			}
			b.ReportMetric(float64(sent)/float64(b.N), "sent-bytes/op")
			b.ReportMetric(float64(sent)/float64(changed), "sent/changed")
		})
	}
}
