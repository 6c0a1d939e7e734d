package e2e

// ssh-transfer: relay on Docker hosts that have no route to the registry:
// the runner fetches, the hosts' dockerd pull through the SSH connection.

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// relayImage is busybox (one layer) plus an app layer of appSize random
// bytes, whose command prints "relayed-ok". The busybox layer is the same
// for every call; the app layer is new each time.
func relayImage(t *testing.T, appSize int64) (img v1.Image, app v1.Layer) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		skipOrFatal(t, "busybox not installed (busybox-static)")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := busyboxTree(tw, bb); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	base, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	app, err = random.Layer(appSize, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.AppendLayers(empty.Image, base, app)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.Cmd = []string{"/bin/busybox", "echo", "relayed-ok"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img, app
}

// relayRun is what the relay scenarios share: the registry as the runner
// names it, on a gateway host's HostAddr, which isolated hosts have no
// route to.
type relayRun struct {
	e       *Env
	regAddr string
}

func (r relayRun) push(t *testing.T, repo, tag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(r.e.Host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	return r.e.pushImageAs(t, ref, img)
}

func (r relayRun) inputs(image string, hosts ...*RemoteHost) map[string]string {
	var names, known []string
	for _, h := range hosts {
		names = append(names, h.SSHHost())
		known = append(known, h.KnownHosts())
	}
	return map[string]string{
		"image":             image,
		"username":          "deployer",
		"password":          canary,
		"ssh-host":          strings.Join(names, "\n"),
		"ssh-key":           hosts[0].ClientKeyPEM(),
		"ssh-known-hosts":   strings.Join(known, "\n"),
		"insecure-registry": r.regAddr,
		"ssh-timeout":       "10s",
		"ssh-transfer":      "relay",
		"timeout":           "3m",
	}
}

// rerunSendsManifestOnly runs the step for image on h again: the host
// holds every layer now, so it pulls nothing and only the manifest
// travels through the relay.
func (r relayRun) rerunSendsManifestOnly(t *testing.T, e *Env, image string, h *RemoteHost) {
	t.Helper()
	res := e.RunAction(t, r.inputs(image, h))
	if rs := results(t, res); res.ExitCode != 0 || rs[0]["pulled"] != false {
		t.Errorf("second run: exit %d, results %v", res.ExitCode, rs)
	} else if n, _ := rs[0]["relayed_bytes"].(float64); n > 16<<10 {
		t.Errorf("second run sent %v bytes, want the manifest only", n)
	}
}

// runOnHost runs ref on h's dockerd with no network and returns its output.
func runOnHost(t *testing.T, h *RemoteHost, ref string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli := h.Docker()
	c, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{Image: ref, HostConfig: &container.HostConfig{NetworkMode: "none"}})
	if err != nil {
		t.Fatalf("docker create %s on %s: %v", ref, h.Name, err)
	}
	defer cli.ContainerRemove(context.Background(), c.ID, client.ContainerRemoveOptions{Force: true})
	wait := cli.ContainerWait(ctx, c.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := cli.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatalf("docker start %s on %s: %v\n%s", ref, h.Name, err, lastLinesOf(h.DockerdLog(), 10))
	}
	select {
	case <-wait.Result:
	case err := <-wait.Error:
		t.Fatalf("waiting for %s on %s: %v", ref, h.Name, err)
	}
	logs, err := cli.ContainerLogs(ctx, c.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	b, _ := io.ReadAll(logs)
	return string(b)
}

// hostNames lists every name the host's dockerd holds.
func hostNames(t *testing.T, h *RemoteHost) []string {
	t.Helper()
	imgs, err := h.Docker().ImageList(context.Background(), client.ImageListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, img := range imgs.Items {
		out = append(out, img.RepoTags...)
		out = append(out, img.RepoDigests...)
	}
	return out
}

// assertHostClean: no credential in any form on the host (files under its
// areas, daemon config, process command lines and environments), no
// command run but Docker's dial-stdio route, no loopback name left, no
// forward listening.
func assertHostClean(t *testing.T, h *RemoteHost) {
	t.Helper()
	needles := append(secretForms("deployer", canary), secretForms("deployer", "wrong-"+canary)...)
	if found := h.FindInFiles(needles...); len(found) > 0 {
		t.Errorf("%s: secret found: %v", h.Name, found)
	}
	for _, cmd := range h.Commands() {
		// OpenSSH refuses the stream-local channel too when
		// AllowTcpForwarding is no: the route to Docker is then dial-stdio.
		if !dialStdioCommand.MatchString(cmd) {
			t.Errorf("%s: a command ran on the host: %q", h.Name, cmd)
		}
	}
	for _, n := range hostNames(t, h) {
		if strings.HasPrefix(n, "127.0.0.1:") {
			t.Errorf("%s: the relay's name %s is left", h.Name, n)
		}
	}
	assertNoForward(t, h)
}

// assertNoForward: nothing listens on the host's loopback once the step
// has ended (the relay's remote forward closed with the connection) but
// containerd's CRI streaming server (exec and attach), which a node runs
// on 127.0.0.1 with a port of its own.
func assertNoForward(t *testing.T, h *RemoteHost) {
	t.Helper()
	var listening string
	err := waitUntil(10*time.Second, 100*time.Millisecond, func() (bool, error) {
		out, err := exec.Command("nsenter", "--net=/var/run/netns/"+h.Namespace, "ss", "-Hltnp").CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("ss: %v: %s", err, out)
		}
		listening = ""
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "127.0.0.1:") && !strings.Contains(l, `users:(("containerd",`) {
				listening += l + "\n"
			}
		}
		return listening == "", nil
	})
	if err != nil {
		t.Errorf("%s: a forward still listens on the host's loopback (%v):\n%s", h.Name, err, listening)
	}
}

var dialStdioCommand = regexp.MustCompile(`^docker -H 'unix://[^']+' system dial-stdio$`)

func assertNoRelayCache(t *testing.T, res Result) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(res.Temp, "ghcr-pull-relay-*"))
	if len(left) > 0 {
		t.Errorf("the relay's cache is left: %v", left)
	}
}

func TestRelay(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("deployer", canary, false, "acme/relay-private", "acme/relay-fleet")
	gw := StartRemoteHost(t, "rgw", HostSpec{Kind: NoRuntime})
	r := relayRun{e: e, regAddr: gw.ExposeOnHost(t, e.Host)}
	a := StartRemoteHost(t, "ra", HostSpec{Net: Isolated})
	b := StartRemoteHost(t, "rb", HostSpec{Net: Isolated})
	c := StartRemoteHost(t, "rc", HostSpec{Net: Isolated})
	for _, h := range []*RemoteHost{b, c} {
		h.AuthorizeKey(t, a.ClientSigner().PublicKey())
	}

	v1img, _ := relayImage(t, 512<<10)
	privDigest := r.push(t, "acme/relay-private", "1", v1img)
	pubImg, _ := relayImage(t, 64<<10)
	pubDigest := r.push(t, "acme/relay-public", "1", pubImg)
	e.Front.SetPublic("acme/relay-public")
	private := r.regAddr + "/acme/relay-private:1"

	t.Run("isolated: a direct pull cannot reach the registry", func(t *testing.T) {
		for _, h := range []*RemoteHost{a, b, c} {
			out, err := exec.Command("ip", "-n", h.Namespace, "route", "get", gw.HostAddr()).CombinedOutput()
			if err == nil {
				t.Fatalf("%s has a route to the registry's address %s: %s", h.Name, gw.HostAddr(), out)
			}
		}
		in := r.inputs(private, a)
		in["ssh-transfer"] = "direct"
		in["retries"] = "0"
		res := e.RunAction(t, in)
		if res.ExitCode != 1 {
			t.Fatalf("exit %d, want 1: the host reached the registry\n%s", res.ExitCode, res.Stdout)
		}
		if names := hostNames(t, a); len(names) != 0 {
			t.Errorf("the host holds %v after a failed direct pull", names)
		}
	})

	t.Run("a fresh host, by tag, private image", func(t *testing.T) {
		res := e.RunAction(t, r.inputs(private, a))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s\n%s", res.ExitCode, res.Stdout, lastLinesOf(a.DockerdLog(), 8))
		}
		rs := results(t, res)
		if len(rs) != 1 || rs[0]["host"] != a.Addr() || rs[0]["auth_mode"] != "token" || rs[0]["digest"] != privDigest || rs[0]["pulled"] != true {
			t.Fatalf("results = %v", rs)
		}
		got, err := a.Docker().ImageInspect(context.Background(), private)
		if err != nil {
			t.Fatalf("the user's tag is not on the host: %v; names %v", err, hostNames(t, a))
		}
		cfg, _ := v1img.ConfigName()
		if got.ID != cfg.String() || rs[0]["image_ref"] != got.ID || res.Outputs["image-ref"] != got.ID {
			t.Errorf("tag → %s, image_ref %v (output %q), want the image ID %s", got.ID, rs[0]["image_ref"], res.Outputs["image-ref"], cfg)
		}
		if names := hostNames(t, a); len(names) != 1 || names[0] != private {
			t.Errorf("names on the host %v, want only %s", names, private)
		}
		if out := runOnHost(t, a, private); !strings.Contains(out, "relayed-ok") {
			t.Errorf("docker run %s with no network printed %q", private, out)
		}
		if n, _ := rs[0]["relayed_bytes"].(float64); n < 512<<10 {
			t.Errorf("relayed_bytes %v, want at least the app layer", rs[0]["relayed_bytes"])
		}
		assertNoSecretLeak(t, res, canary)
		assertNoRelayCache(t, res)
		assertHostClean(t, a)

		// Again: the host has every layer, nothing but the manifest travels.
		r.rerunSendsManifestOnly(t, e, private, a)
	})

	t.Run("by digest: held by the digest tag, image_ref the image ID", func(t *testing.T) {
		ref := r.regAddr + "/acme/relay-private@" + privDigest
		res := e.RunAction(t, r.inputs(ref, b))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		cfg, _ := v1img.ConfigName()
		if rs[0]["digest"] != privDigest || rs[0]["image_ref"] != cfg.String() {
			t.Errorf("results = %v, want digest %s and image_ref %s", rs, privDigest, cfg)
		}
		hold := r.regAddr + "/acme/relay-private:sha256-" + strings.TrimPrefix(privDigest, "sha256:")
		if names := hostNames(t, b); len(names) != 1 || names[0] != hold {
			t.Errorf("names on the host %v, want only %s", names, hold)
		}
		if out := runOnHost(t, b, cfg.String()); !strings.Contains(out, "relayed-ok") {
			t.Errorf("docker run %s printed %q", cfg, out)
		}
		assertHostClean(t, b)
	})

	t.Run("rejected credentials on a public image fall back", func(t *testing.T) {
		in := r.inputs(r.regAddr+"/acme/relay-public:1", c)
		in["password"] = "wrong-" + canary
		res := e.RunAction(t, in)
		if res.ExitCode != 0 || res.Outputs["fallback-used"] != "true" || res.Outputs["auth-mode"] != "anonymous" {
			t.Fatalf("exit %d outputs %v\n%s", res.ExitCode, res.Outputs, res.Stdout)
		}
		if rs := results(t, res); rs[0]["digest"] != pubDigest || rs[0]["fallback_used"] != true {
			t.Errorf("results = %v", rs)
		}
		if _, err := c.Docker().ImageInspect(context.Background(), r.regAddr+"/acme/relay-public:1"); err != nil {
			t.Errorf("the public image is not on the host: %v", err)
		}
		assertNoSecretLeak(t, res, "wrong-"+canary)
		assertHostClean(t, c)
	})

	t.Run("three hosts at once: one upstream fetch per blob", func(t *testing.T) {
		img, _ := relayImage(t, 256<<10)
		r.push(t, "acme/relay-fleet", "1", img)
		e.Front.ResetLog()
		in := r.inputs(r.regAddr+"/acme/relay-fleet:1", a, b, c)
		res := e.RunAction(t, in)
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		gets := map[string]int{}
		for _, q := range e.Front.Requests() {
			if q.Method == "GET" && strings.Contains(q.Path, "/acme/relay-fleet/blobs/") {
				gets[q.Path[strings.LastIndex(q.Path, "/")+1:]]++
			}
		}
		m, _ := img.Manifest()
		// The busybox layer is on a and b already; the config and the
		// app layer are new to every host.
		want := []string{m.Config.Digest.String(), m.Layers[1].Digest.String()}
		for _, d := range want {
			if gets[d] != 1 {
				t.Errorf("blob %s fetched upstream %d times, want once for three hosts (all: %v)", d, gets[d], gets)
			}
		}
		for d, n := range gets {
			if n != 1 {
				t.Errorf("blob %s fetched upstream %d times", d, n)
			}
		}
		for _, rr := range results(t, res) {
			if rr["error"] != nil || rr["digest"] == "" {
				t.Errorf("result %v", rr)
			}
		}
		for _, h := range []*RemoteHost{a, b, c} {
			assertHostClean(t, h)
		}
	})

	t.Run("an update sends only the changed layer", func(t *testing.T) {
		v2img, app := relayImage(t, 1<<20)
		r.push(t, "acme/relay-private", "1", v2img)
		res := e.RunAction(t, r.inputs(private, a))
		if res.ExitCode != 0 {
			t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
		}
		rs := results(t, res)
		changed, _ := app.Size()
		sent, _ := rs[0]["relayed_bytes"].(float64)
		t.Logf("update: the relay sent %.0f bytes for a changed layer of %d (%.3f×)", sent, changed, sent/float64(changed))
		if sent <= 0 || sent > 1.2*float64(changed) {
			t.Errorf("the relay sent %.0f bytes, want at most 1.2× the changed layer (%d)", sent, changed)
		}
		cfg, _ := v2img.ConfigName()
		if got, err := a.Docker().ImageInspect(context.Background(), private); err != nil || got.ID != cfg.String() {
			t.Errorf("the user's tag does not name the update: %v %v", got.ID, err)
		}
		assertHostClean(t, a)
	})

	t.Run("sshd with AllowTcpForwarding no: a named, classified failure", func(t *testing.T) {
		d := StartRemoteHost(t, "rd", HostSpec{Net: Isolated, SSHD: SSHDPolicy{NoTCPForwarding: true}})
		d.AuthorizeKey(t, a.ClientSigner().PublicKey())
		in := r.inputs(private, d)
		in["ssh-key"] = a.ClientKeyPEM()
		res := e.RunAction(t, in)
		if res.ExitCode != 1 || !strings.Contains(res.Stdout, "AllowTcpForwarding") {
			t.Fatalf("exit %d, want 1 naming AllowTcpForwarding\n%s", res.ExitCode, res.Stdout)
		}
		if rs := results(t, res); rs[0]["error_class"] != "ssh-forwarding-refused" || rs[0]["digest"] != "" {
			t.Errorf("results = %v", rs)
		}
		assertNoRelayCache(t, res)
		assertHostClean(t, d)
	})

	t.Run("two tags of one digest in one step: one pull, both tags", func(t *testing.T) {
		r.twoTagsOneDigest(t, dockerRelayed, "acme/relay-fleet", c)
	})

	t.Run("a layer larger than relay-cache-max: named, classified, the cache removed", func(t *testing.T) {
		r.cacheBound(t, dockerRelayed, "acme/relay-fleet", c)
	})

	t.Run("a host that drops mid-transfer fails, the other finishes", func(t *testing.T) {
		r.dropMidTransfer(t, dockerRelayed, "acme/relay-fleet", a, b)
	})
}

// relayedKind is how the relay scenarios that Docker and containerd hosts
// share read a host of that kind.
type relayedKind struct {
	// holds is nil when ref names an image on h, at digest when digest is
	// set and the runtime records one per name.
	holds func(t *testing.T, h *RemoteHost, ref, digest string) error
	clean func(t *testing.T, h *RemoteHost)
}

// dockerRelayed: a dockerd host; a relayed name carries no registry
// metadata, so only its presence is checked.
var dockerRelayed = relayedKind{
	holds: func(t *testing.T, h *RemoteHost, ref, _ string) error {
		_, err := h.Docker().ImageInspect(context.Background(), ref)
		return err
	},
	clean: assertHostClean,
}

// twoTagsOneDigest: two images of the step that are one digest (app:2 and
// app:latest) pulled onto one host at once: one pull through the relay,
// both tags on the host, no loopback name left, both results whole.
func (r relayRun) twoTagsOneDigest(t *testing.T, k relayedKind, repo string, h *RemoteHost) {
	img, _ := relayImage(t, 256<<10)
	dgst := r.push(t, repo, "2", img)
	r.push(t, repo, "latest", img)
	refs := []string{r.regAddr + "/" + repo + ":2", r.regAddr + "/" + repo + ":latest"}
	res := r.e.RunAction(t, r.inputs(strings.Join(refs, "\n"), h))
	if res.ExitCode != 0 {
		t.Fatalf("exit %d\n%s", res.ExitCode, res.Stdout)
	}
	rs := results(t, res)
	if len(rs) != 2 {
		t.Fatalf("results = %v, want one per image", rs)
	}
	for i, ref := range refs {
		if rs[i]["digest"] != dgst || rs[i]["error"] != nil {
			t.Errorf("result for %s: %v", ref, rs[i])
		}
		if err := k.holds(t, h, ref, dgst); err != nil {
			t.Errorf("%s does not hold %s: %v", h.Name, ref, err)
		}
	}
	assertNoRelayCache(t, res)
	k.clean(t, h)
}

// cacheBound: a layer larger than relay-cache-max fails the host, named
// and classified; nothing is named on it and the cache is gone.
func (r relayRun) cacheBound(t *testing.T, k relayedKind, repo string, h *RemoteHost) {
	img, _ := relayImage(t, 2<<20)
	r.push(t, repo, "big", img)
	ref := r.regAddr + "/" + repo + ":big"
	in := r.inputs(ref, h)
	in["relay-cache-max"] = "1MiB"
	in["retries"] = "0"
	res := r.e.RunAction(t, in)
	if res.ExitCode != 1 {
		t.Fatalf("exit %d, want 1\n%s", res.ExitCode, res.Stdout)
	}
	rs := results(t, res)
	if rs[0]["error_class"] != "relay-cache" || rs[0]["digest"] != "" {
		t.Errorf("results = %v, want error_class relay-cache and no digest", rs)
	}
	if msg, _ := rs[0]["error"].(string); !strings.Contains(msg, "raise relay-cache-max") {
		t.Errorf("the error %q does not say what to raise", msg)
	}
	if k.holds(t, h, ref, "") == nil {
		t.Errorf("%s holds the image %s", h.Name, ref)
	}
	assertNoRelayCache(t, res)
	k.clean(t, h)
}

// dropMidTransfer kills a's SSH connections while both hosts pull (the
// app layer is held upstream for a while, so both are mid-pull when a goes
// away): a fails as transient, naming the host and the connection; b
// finishes. Run it last: a's connections are gone.
func (r relayRun) dropMidTransfer(t *testing.T, k relayedKind, repo string, a, b *RemoteHost) {
	img, app := relayImage(t, 2<<20)
	digest := r.push(t, repo, "2", img)
	appDigest, _ := app.Digest()
	// GET: the relay's HEAD of the blob at Allow (relay.warm) goes by.
	r.e.Front.Inject(ghcrsim.Fault{Match: "/blobs/" + appDigest.String(), Method: http.MethodGet, Stall: 4 * time.Second})
	// The fault matches this blob alone: left unconsumed, it harms no
	// other test.
	dropped := make(chan int, 1)
	go func() {
		waitUntil(time.Minute, 50*time.Millisecond, func() (bool, error) { return r.e.Front.Pending() == 0, nil })
		time.Sleep(500 * time.Millisecond)
		dropped <- a.DropSSHConnections()
	}()
	ref := r.regAddr + "/" + repo + ":2"
	in := r.inputs(ref, a, b)
	in["retries"] = "0"
	res := r.e.RunAction(t, in)
	if n := <-dropped; n == 0 {
		t.Fatalf("no SSH connection of %s to drop", a.Name)
	}
	if res.ExitCode != 1 {
		t.Fatalf("exit %d, want 1 (one host failed)\n%s", res.ExitCode, res.Stdout)
	}
	by := map[any]map[string]any{}
	for _, rr := range results(t, res) {
		by[rr["host"]] = rr
	}
	ra := by[a.Addr()]
	if ra == nil || ra["digest"] != "" || ra["error_class"] != "transient" {
		t.Errorf("the dropped host's result %v, want a transient error and no digest", ra)
	} else if msg, _ := ra["error"].(string); !strings.Contains(msg, "the SSH connection to the host ended") || !strings.Contains(msg, a.Addr()) {
		t.Errorf("the dropped host's error %q, want it to name the host %s and the SSH connection ending", msg, a.Addr())
	}
	if rb := by[b.Addr()]; rb == nil || rb["error"] != nil || rb["digest"] != digest {
		t.Errorf("the other host's result %v, want %s", rb, digest)
	}
	if err := k.holds(t, b, ref, digest); err != nil {
		t.Errorf("the other host lacks the image: %v", err)
	}
	assertNoRelayCache(t, res)
	for _, h := range []*RemoteHost{a, b} {
		k.clean(t, h)
	}
}
