package e2e

import (
	"fmt"
	"strings"
	"testing"
)

// TestLoad pulls 20 images onto 3 remote hosts in one step (60 pulls) and
// checks that all land and that the action's memory stays bounded.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test skipped with -short")
	}
	e := Start(t)
	hosts := []*RemoteHost{StartRemoteHost(t, "la", HostSpec{})}
	for _, n := range []string{"lb", "lc"} {
		h := StartRemoteHost(t, n, HostSpec{})
		h.AuthorizeKey(t, hosts[0].ClientSigner().PublicKey())
		hosts = append(hosts, h)
	}
	regAddr := hosts[0].ExposeOnHost(t, e.Host)
	var images []string
	for i := range 20 {
		repo := fmt.Sprintf("load/app%02d", i)
		e.pushImage(t, repo, "1", 128<<10, 2)
		e.Front.SetPublic(repo)
		images = append(images, regAddr+"/"+repo+":1")
	}
	var names, known []string
	for _, h := range hosts {
		names = append(names, h.SSHHost())
		known = append(known, h.KnownHosts())
	}
	res := e.RunAction(t, map[string]string{
		"image": strings.Join(images, "\n"), "auth": "anonymous",
		"ssh-host": strings.Join(names, ","), "ssh-key": hosts[0].ClientKeyPEM(),
		"ssh-known-hosts": strings.Join(known, "\n"), "insecure-registry": regAddr,
	})
	if res.ExitCode != 0 {
		t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
	}
	rs := results(t, res)
	if len(rs) != 60 {
		t.Fatalf("%d results, want 60", len(rs))
	}
	for _, h := range hosts {
		for _, img := range images {
			if len(remoteHas(t, h, img)) == 0 {
				t.Errorf("%s missing on %s", img, h.Name)
			}
		}
	}
	const boundKiB = 150 << 10
	t.Logf("20 images x 3 hosts: wall %s, peak RSS %d KiB", res.Wall, res.MaxRSSKiB)
	if res.MaxRSSKiB == 0 || res.MaxRSSKiB > boundKiB {
		t.Errorf("peak RSS %d KiB outside (0, %d]", res.MaxRSSKiB, boundKiB)
	}
}
