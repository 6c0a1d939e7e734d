package sshdeploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

// fakeRelay answers every forwarded request with the path asked for.
type fakeRelay struct {
	allowErr error
	// serving, when set, is closed by Serve; Allow waits for it (so a
	// pull that opened the forward only after Allow would stall).
	serving chan struct{}
	mu      sync.Mutex
	allowed []string
	creds   []registryauth.Credentials
	hosts   []string
	blobs   map[[2]string]bool // blobs asked for, by host and digest
}

func (r *fakeRelay) Allow(_ context.Context, ref name.Digest, creds registryauth.Credentials) (string, error) {
	if r.serving != nil {
		select {
		case <-r.serving:
		case <-time.After(5 * time.Second):
			return "", errors.New("Allow ran alone: the forward was not opened meanwhile")
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.allowed = append(r.allowed, ref.String())
	r.creds = append(r.creds, creds)
	if r.allowErr != nil {
		return "", r.allowErr
	}
	return ref.Context().RepositoryStr(), nil
}

func (r *fakeRelay) Serve(l net.Listener, host string) error {
	r.mu.Lock()
	r.hosts = append(r.hosts, host)
	if r.serving != nil {
		close(r.serving)
	}
	r.mu.Unlock()
	return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if _, dgst, ok := strings.Cut(req.URL.Path, "/blobs/"); ok {
			r.mu.Lock()
			if r.blobs == nil {
				r.blobs = map[[2]string]bool{}
			}
			r.blobs[[2]string{host, dgst}] = true
			r.mu.Unlock()
		}
		io.WriteString(w, "relayed "+req.URL.Path)
	}))
}

func (r *fakeRelay) Err(string) error { return nil }

// NewImage: every image's config is fakeConfig; the host asked for it
// when it lacked the image (fakeDockerd.Pull).
func (r *fakeRelay) NewImage(host, _, _ string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fakeConfig, r.blobs[[2]string{host, fakeConfig}]
}

// settled waits for the loopback names a relayed Docker host's Tag is
// removing (they go while pull goes on).
func settled(rt any) {
	if d, ok := rt.(*relayedDocker); ok {
		d.aside.Wait()
	}
}

// fakeConfig is the config digest, so the image ID, of every image the
// fakes relay.
const fakeConfig = "sha256:imageid"

// fakeDockerd keeps names → image IDs and deletes an image with its last
// name, as dockerd does. Its Pull fetches the reference's manifest path
// over HTTP from the reference's host, as dockerd would from the forward.
type fakeDockerd struct {
	mu    sync.Mutex
	names map[string]string
	ops   []string
	creds []registryauth.Credentials
	got   string // what the forward answered
	// failures: a tag to a target, removals (the first rmiFails), an
	// inspection of a loopback name.
	tagErr      map[string]error
	rmiFails    int
	inspectFail bool
	rmiSlow     bool   // a removal answers late: what runs beside it sees the name
	onPull      func() // called as Pull begins
	// containerdStore: image IDs are not config digests (and the fake's
	// IDs are all fakeConfig, so only the inspection shows it).
	containerdStore bool
	storeAsked      int
}

// pullThroughForward does what a host's runtime does first with a
// relayed reference (<loopback>/<repo>@<digest>): GET its manifest from
// the relay through the forward, returning what the relay answered, and
// unless the host has the image (had), its config.
func pullThroughForward(ctx context.Context, ref string, had bool) (string, error) {
	hostPort, rest, _ := strings.Cut(ref, "/")
	repo, dgst, _ := strings.Cut(rest, "@")
	get := func(path string) (string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostPort+"/v2/"+repo+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	got, err := get("/manifests/" + dgst)
	if err == nil && !had {
		_, err = get("/blobs/" + fakeConfig)
	}
	return got, err
}

func (d *fakeDockerd) Pull(ctx context.Context, ref string, _ *ocispec.Platform, creds registryauth.Credentials, _ func(int64, int64)) (bool, error) {
	if d.onPull != nil {
		d.onPull()
	}
	d.mu.Lock()
	had := slices.Contains(mapsValues(d.names), fakeConfig)
	d.mu.Unlock()
	got, err := pullThroughForward(ctx, ref, had)
	if err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got = got
	d.creds = append(d.creds, creds)
	d.ops = append(d.ops, "pull "+ref)
	d.names[ref] = fakeConfig
	return true, nil
}

// ConfigIDs: image IDs are config digests unless the daemon keeps
// containerd's store.
func (d *fakeDockerd) ConfigIDs(context.Context) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.storeAsked++
	return !d.containerdStore, nil
}

func (d *fakeDockerd) Tag(_ context.Context, source, target string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = append(d.ops, "tag "+source+" "+target)
	if err := d.tagErr[target]; err != nil {
		return err
	}
	id, ok := d.names[source]
	if !ok && strings.HasPrefix(source, "sha256:") {
		id, ok = source, true
	}
	if !ok {
		return fmt.Errorf("no such image: %s", source)
	}
	d.names[target] = id
	return nil
}

func (d *fakeDockerd) Inspect(_ context.Context, ref string) (image.Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = append(d.ops, "inspect "+ref)
	if d.inspectFail && strings.HasPrefix(ref, "127.0.0.1:") {
		return image.Info{}, errors.New("dockerd: inspect failed")
	}
	id, ok := d.names[ref]
	if !ok && strings.HasPrefix(ref, "sha256:") && slices.Contains(mapsValues(d.names), ref) {
		id, ok = ref, true
	}
	if !ok {
		return image.Info{}, fmt.Errorf("no such image: %s", ref)
	}
	info := image.Info{ID: id, Platform: image.PlatformOf("linux", "amd64", "")}
	for n, i := range d.names {
		if i == id && strings.Contains(n, "@") {
			info.RepoDigests = append(info.RepoDigests, image.ParseRepoDigests([]string{n})...)
		}
	}
	return info, nil
}

func mapsValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func (d *fakeDockerd) Remove(_ context.Context, ref string) error {
	if d.rmiSlow {
		time.Sleep(100 * time.Millisecond)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = append(d.ops, "rmi "+ref)
	if d.rmiFails > 0 {
		d.rmiFails--
		return errors.New("dockerd: conflict")
	}
	if _, ok := d.names[ref]; !ok {
		return fmt.Errorf("no such image: %s", ref)
	}
	delete(d.names, ref)
	return nil
}

func (d *fakeDockerd) Runtime() (string, string) { return "docker", "" }
func (d *fakeDockerd) Close() error              { return nil }

func (d *fakeDockerd) namesOf(id string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for n, i := range d.names {
		if i == id {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

const relayDigest = "sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899"

func dialTest(t *testing.T, opts ...sshtest.Option) (testServer, *sshConn) {
	t.Helper()
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey(), opts...)
	conn, err := dialHost(context.Background(), srv.host("root"), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return srv, conn
}

// checkRelayedPull holds what forward.pull promises every relayed runtime:
// the relay got the probe's credentials, the host's runtime none (given is
// what it was handed), its request came through the forward, and that
// forward is one on the host's loopback.
func checkRelayedPull(t *testing.T, srv testServer, rl *fakeRelay, creds registryauth.Credentials, given []registryauth.Credentials, got string) {
	t.Helper()
	if len(rl.creds) != 1 || rl.creds[0] != creds {
		t.Errorf("the relay was given %v, want the probe's credentials", rl.creds)
	}
	if len(given) != 1 || given[0] != registryauth.Anonymous {
		t.Errorf("the host's runtime was given %v, want nothing", given)
	}
	if want := "relayed /v2/acme/app/manifests/" + relayDigest; got != want {
		t.Errorf("through the forward: %q, want %q", got, want)
	}
	if len(srv.Forwards()) != 1 || !strings.HasPrefix(srv.Forwards()[0], "127.0.0.1:") {
		t.Errorf("forwards %v, want one on the host's loopback", srv.Forwards())
	}
}

// checkForwardClosed: after the runtime's Close nothing listens on the
// host's loopback for the relay.
func checkForwardClosed(t *testing.T, srv testServer) {
	t.Helper()
	if c, err := net.DialTimeout("tcp", srv.Forwards()[0], time.Second); err == nil {
		c.Close()
		t.Errorf("the forward %s still listens after Close", srv.Forwards()[0])
	}
}

// loopbackSpelled is calls (or names) with each loopback name, whose port
// sshd picks, spelled 127.0.0.1.
func loopbackSpelled(calls []string) []string {
	var out []string
	for _, c := range calls {
		if i := strings.Index(c, "127.0.0.1:"); i >= 0 {
			c = c[:i] + "127.0.0.1"
		}
		out = append(out, c)
	}
	return out
}

// TestRelayedDockerRoundTrips: each call to the host is a round trip over
// its network. A tag input gets the user's tag and then loses the
// loopback name (no digest tag in between); a digest input gets the digest
// tag when inspected, its loopback name removed while it is inspected.
// Whatever fails, no loopback name stays after Close, and no name is
// removed before another holds the image.
func TestRelayedDockerRoundTrips(t *testing.T) {
	ctx := context.Background()
	ref := "ghcr.io/acme/app@" + relayDigest
	hold := "ghcr.io/acme/app:sha256-" + strings.TrimPrefix(relayDigest, "sha256:")
	tag := "ghcr.io/acme/app:1"
	had := "ghcr.io/acme/app:0" // a name the host held the image by
	for _, tc := range []struct {
		name   string
		engine *fakeDockerd
		// had: the host holds the image before the pull
		had bool
		// steps after Pull, as pull makes them; each wants an error
		// containing its text, or none
		tag, inspect string
		wantTagErr   string
		wantErr      string // Pull's
		wantCloseErr string
		wantOps      []string // the loopback name spelled 127.0.0.1; sorted where marked
		unordered    int      // the last unordered ops run at once
		wantNames    []string
	}{
		{
			name: "a tag on a fresh host: no inspection after the pull (the relay knows the ID), one name given, the loopback name removed while the tag is inspected",
			tag:  tag, inspect: tag, engine: &fakeDockerd{rmiSlow: true},
			wantOps:   []string{"pull 127.0.0.1", "tag sha256:imageid " + tag, "inspect " + tag, "rmi 127.0.0.1"},
			wantNames: []string{tag},
		},
		{
			name: "a tag on a fresh host whose daemon keeps containerd's store: inspected for its ID (not the config's digest there)",
			tag:  tag, inspect: tag, engine: &fakeDockerd{containerdStore: true},
			wantOps:   []string{"pull 127.0.0.1", "inspect 127.0.0.1", "tag sha256:imageid " + tag, "inspect " + tag, "rmi 127.0.0.1"},
			unordered: 2,
			wantNames: []string{tag},
		},
		{
			name: "a tag on a host that had the image: inspected for its ID", had: true, tag: tag, inspect: tag,
			wantOps:   []string{"pull 127.0.0.1", "inspect 127.0.0.1", "tag sha256:imageid " + tag, "inspect " + tag, "rmi 127.0.0.1"},
			unordered: 2,
			wantNames: []string{had, tag},
		},
		{
			name: "a digest: the digest tag given, the loopback name removed while inspected (and not reported)", inspect: ref,
			engine:    &fakeDockerd{rmiSlow: true},
			wantOps:   []string{"pull 127.0.0.1", "tag sha256:imageid " + hold, "inspect sha256:imageid", "rmi 127.0.0.1"},
			wantNames: []string{hold},
		},
		{
			name: "tagging fails: Close names the image by its digest tag and removes the loopback name", tag: tag,
			engine:     &fakeDockerd{tagErr: map[string]error{tag: errors.New("dockerd: tag refused")}},
			wantTagErr: "tag refused",
			wantOps:    []string{"pull 127.0.0.1", "tag sha256:imageid " + tag, "tag sha256:imageid " + hold, "rmi 127.0.0.1"},
			wantNames:  []string{hold},
		},
		{
			name: "removing the loopback name fails: Close removes it", tag: tag, inspect: tag,
			engine:    &fakeDockerd{rmiFails: 1, rmiSlow: true},
			wantOps:   []string{"pull 127.0.0.1", "tag sha256:imageid " + tag, "inspect " + tag, "rmi 127.0.0.1", "rmi 127.0.0.1"},
			wantNames: []string{tag},
		},
		{
			name: "removing it fails at Close too: Close says so", tag: tag,
			engine:       &fakeDockerd{rmiFails: 2},
			wantCloseErr: "removing the relay's name 127.0.0.1:",
			wantOps:      []string{"pull 127.0.0.1", "tag sha256:imageid " + tag, "rmi 127.0.0.1", "rmi 127.0.0.1"},
			wantNames:    []string{"127.0.0.1", tag},
		},
		{
			name:   "inspecting the pulled image fails (a host that had it): its loopback name goes at once",
			engine: &fakeDockerd{inspectFail: true}, had: true, wantErr: "inspect failed",
			wantOps:   []string{"pull 127.0.0.1", "inspect 127.0.0.1", "rmi 127.0.0.1"},
			wantNames: []string{had},
		},
		{
			name:      "Close after a pull with no Tag nor Inspect: the digest tag holds the image",
			wantOps:   []string{"pull 127.0.0.1", "tag sha256:imageid " + hold, "rmi 127.0.0.1"},
			wantNames: []string{hold},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			engine := tc.engine
			if engine == nil {
				engine = &fakeDockerd{}
			}
			engine.names = map[string]string{}
			if tc.had {
				engine.names[had] = fakeConfig
			}
			_, conn := dialTest(t, sshtest.WithTCPForward())
			// As Open does: the forward opens while the runtime does.
			fwd := newForward(&fakeRelay{}, conn)
			if _, err := fwd.port(); err != nil {
				t.Fatal(err)
			}
			d := newRelayedDocker(engine, fwd)
			check := func(what string, err error, want string) {
				t.Helper()
				if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
					t.Fatalf("%s: %v, want %q", what, err, want)
				}
			}
			pulled, err := d.Pull(ctx, ref, nil, registryauth.Anonymous, nil)
			check("Pull", err, tc.wantErr)
			if err == nil && pulled == tc.had {
				t.Errorf("Pull reports the image new: %v, want %v", pulled, !tc.had)
			}
			if tc.tag != "" {
				check("Tag", d.Tag(ctx, ref, tc.tag), tc.wantTagErr)
			}
			if tc.inspect != "" {
				info, err := d.Inspect(ctx, tc.inspect)
				check("Inspect", err, "")
				for _, rd := range info.RepoDigests {
					if strings.HasPrefix(rd.String(), "127.0.0.1:") {
						t.Errorf("Inspect reports the loopback name %s", rd)
					}
				}
			}
			check("Close", d.Close(), tc.wantCloseErr)
			engine.mu.Lock()
			if engine.storeAsked != 1 {
				t.Errorf("the store's kind asked %d times beside the pull, want 1 (it also opens the connection the naming after it needs)", engine.storeAsked)
			}
			ops := loopbackSpelled(engine.ops)
			names := slices.Sorted(slices.Values(loopbackSpelled(slices.Collect(maps.Keys(engine.names)))))
			engine.mu.Unlock()
			want := tc.wantOps
			if n := tc.unordered; n > 0 && len(ops) == len(want) {
				ops = append(ops[:len(ops)-n:len(ops)-n], slices.Sorted(slices.Values(ops[len(ops)-n:]))...)
				want = append(want[:len(want)-n:len(want)-n], slices.Sorted(slices.Values(want[len(want)-n:]))...)
			}
			if !slices.Equal(ops, want) {
				t.Errorf("calls to the host %q, want %q", ops, want)
			}
			if !slices.Equal(names, tc.wantNames) {
				t.Errorf("names on the host %q, want %q", names, tc.wantNames)
			}
		})
	}
}

func TestRelayedDocker(t *testing.T) {
	ctx := context.Background()
	creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "secret", RegistryToken: "tok"}

	t.Run("a tag: pulled from the forward with no credentials, then only the user's tag names it", func(t *testing.T) {
		srv, conn := dialTest(t, sshtest.WithTCPForward())
		rl, engine := &fakeRelay{}, &fakeDockerd{names: map[string]string{}}
		d := newRelayedDocker(engine, newForward(rl, conn))
		ref := "ghcr.io/acme/app@" + relayDigest
		if pulled, err := d.Pull(ctx, ref, nil, creds, nil); err != nil || !pulled {
			t.Fatalf("Pull = %v, %v; want a new image", pulled, err)
		}
		checkRelayedPull(t, srv, rl, creds, engine.creds, engine.got)
		if err := d.Tag(ctx, ref, "ghcr.io/acme/app:1"); err != nil {
			t.Fatal(err)
		}
		settled(d)
		if got := engine.namesOf("sha256:imageid"); !slices.Equal(got, []string{"ghcr.io/acme/app:1"}) {
			t.Errorf("names on the host %v, want only the user's tag (ops %q)", got, engine.ops)
		}
		info, err := d.Inspect(ctx, "ghcr.io/acme/app:1")
		if err != nil {
			t.Fatal(err)
		}
		if info.Ref != "sha256:imageid" || !slices.ContainsFunc(info.RepoDigests, func(rd reference.Canonical) bool { return rd.String() == ref }) {
			t.Errorf("Inspect = %+v, want the image ID as Ref and %s in RepoDigests", info, ref)
		}
		if pulled, err := d.Pull(ctx, ref, nil, creds, nil); err != nil || pulled {
			t.Errorf("Pull again = %v, %v; want the image reported as there already", pulled, err)
		}
		if err := d.Tag(ctx, ref, "ghcr.io/acme/app:1"); err != nil {
			t.Fatal(err)
		}
		settled(d)
		if got := engine.namesOf("sha256:imageid"); !slices.Equal(got, []string{"ghcr.io/acme/app:1"}) {
			t.Errorf("after a second pull, names %v (ops %q)", got, engine.ops)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		checkForwardClosed(t, srv)
	})

	t.Run("a digest: held by the digest tag, no loopback name", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		engine := &fakeDockerd{names: map[string]string{}}
		d := newRelayedDocker(engine, newForward(&fakeRelay{}, conn))
		// pull pulls the familiar name and inspects the input as written.
		ref := "busybox@" + relayDigest
		if _, err := d.Pull(ctx, ref, nil, creds, nil); err != nil {
			t.Fatal(err)
		}
		for _, spelled := range []string{ref, "docker.io/library/busybox@" + relayDigest} {
			info, err := d.Inspect(ctx, spelled)
			if err != nil || info.Ref != "sha256:imageid" {
				t.Errorf("Inspect(%s) = %+v, %v", spelled, info, err)
			}
		}
		want := []string{"busybox:sha256-" + strings.TrimPrefix(relayDigest, "sha256:")}
		settled(d)
		if got := engine.namesOf("sha256:imageid"); !slices.Equal(got, want) {
			t.Errorf("names %v, want %v (ops %q)", got, want, engine.ops)
		}
	})

	t.Run("two tags of one digest: only the user's tags are left", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		engine := &fakeDockerd{names: map[string]string{}}
		d := newRelayedDocker(engine, newForward(&fakeRelay{}, conn))
		ref := "ghcr.io/acme/app@" + relayDigest
		// pull's order for two images on one host, interleaved.
		for _, step := range []func() error{
			func() error { _, err := d.Pull(ctx, ref, nil, creds, nil); return err },
			func() error { _, err := d.Pull(ctx, ref, nil, creds, nil); return err },
			func() error { return d.Tag(ctx, ref, "ghcr.io/acme/app:1") },
			func() error { return d.Tag(ctx, ref, "ghcr.io/acme/app:latest") },
		} {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		settled(d)
		if got := engine.namesOf("sha256:imageid"); !slices.Equal(got, []string{"ghcr.io/acme/app:1", "ghcr.io/acme/app:latest"}) {
			t.Errorf("names %v (ops %q)", got, engine.ops)
		}
	})

	t.Run("two images of one digest at once: one pull, both tags", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		hold := newPullHold()
		engine := &fakeDockerd{names: map[string]string{}, onPull: hold.onPull}
		d := newRelayedDocker(engine, newForward(&fakeRelay{}, conn))
		pullTwoAtOnce(t, d, hold, "ghcr.io/acme/app@"+relayDigest, "ghcr.io/acme/app:1", "ghcr.io/acme/app:latest")
		settled(d)
		pulls := countPrefixed(engine.ops, "pull ")
		if got := engine.namesOf("sha256:imageid"); pulls != 1 || !slices.Equal(got, []string{"ghcr.io/acme/app:1", "ghcr.io/acme/app:latest"}) {
			t.Errorf("%d pulls, names %v, want 1 and the two tags (ops %q)", pulls, got, engine.ops)
		}
	})

	t.Run("a digest tag the host had stays", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		hold := "ghcr.io/acme/app:sha256-" + strings.TrimPrefix(relayDigest, "sha256:")
		engine := &fakeDockerd{names: map[string]string{hold: "sha256:imageid"}}
		d := newRelayedDocker(engine, newForward(&fakeRelay{}, conn))
		ref := "ghcr.io/acme/app@" + relayDigest
		if _, err := d.Pull(ctx, ref, nil, creds, nil); err != nil {
			t.Fatal(err)
		}
		if err := d.Tag(ctx, ref, "ghcr.io/acme/app:1"); err != nil {
			t.Fatal(err)
		}
		settled(d)
		if got := engine.namesOf("sha256:imageid"); !slices.Equal(got, []string{"ghcr.io/acme/app:1", hold}) {
			t.Errorf("names %v (ops %q)", got, engine.ops)
		}
	})

	t.Run("sshd refusing the forward names AllowTcpForwarding", func(t *testing.T) {
		_, conn := dialTest(t)
		engine := &fakeDockerd{names: map[string]string{}}
		d := newRelayedDocker(engine, newForward(&fakeRelay{}, conn))
		_, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, creds, nil)
		var fe *forwardError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), "AllowTcpForwarding") || failure.ClassOf(err) != "ssh-forwarding-refused" {
			t.Fatalf("err = %v (class %q), want a ForwardError naming AllowTcpForwarding", err, failure.ClassOf(err))
		}
		if len(engine.ops) != 0 {
			t.Errorf("the daemon was asked %q", engine.ops)
		}
	})

	t.Run("Allow runs while the forward opens", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		engine := &fakeDockerd{names: map[string]string{}}
		d := newRelayedDocker(engine, newForward(&fakeRelay{serving: make(chan struct{})}, conn))
		if _, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, creds, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("an upstream refusal comes back classified, before the host is asked", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		engine := &fakeDockerd{names: map[string]string{}}
		rej := &failure.Rejected{Response: failure.Response{Status: 403}}
		d := newRelayedDocker(engine, newForward(&fakeRelay{allowErr: rej}, conn))
		_, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, creds, nil)
		if !errors.As(err, &rej) {
			t.Fatalf("err = %v, want the relay's Rejected", err)
		}
		if len(engine.ops) != 0 {
			t.Errorf("the daemon was asked %q", engine.ops)
		}
	})
}

// droppingDockerd fails its pull the way dockerd's stream does when the SSH
// connection under it goes: drop ends the connection first.
type droppingDockerd struct {
	*fakeDockerd
	drop func()
}

func (d *droppingDockerd) Pull(context.Context, string, *ocispec.Platform, registryauth.Credentials, func(int64, int64)) (bool, error) {
	d.drop()
	return false, errors.New("from the daemon: error reading from server: EOF")
}

func TestRelayedDockerConnectionLost(t *testing.T) {
	ctx := context.Background()
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey(), sshtest.WithTCPForward())
	var raw net.Conn
	conn, err := dialHost(ctx, srv.host("root"), dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			raw = c
			return c, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	t.Run("the connection ends mid-pull: transient, naming the host and the connection", func(t *testing.T) {
		engine := &droppingDockerd{fakeDockerd: &fakeDockerd{names: map[string]string{}}, drop: func() { raw.Close() }}
		d := newRelayedDocker(engine, newForward(&fakeRelay{}, conn))
		_, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, registryauth.Anonymous, nil)
		var lost *connectionLostError
		if !errors.As(err, &lost) {
			t.Fatalf("Pull = %v, want a *ConnectionLostError", err)
		}
		if got := failure.ClassOf(err); got != "transient" {
			t.Errorf("class %q, want transient", got)
		}
		host := srv.host("root").String()
		if msg := err.Error(); !strings.Contains(msg, "ssh "+host+": the SSH connection to the host ended") || !strings.Contains(msg, "error reading from server: EOF") {
			t.Errorf("error %q, want the host %s, the connection ending, and the daemon's words", msg, host)
		}
	})
}

func TestRelayedDockerErrorWithConnectionUp(t *testing.T) {
	ctx := context.Background()
	_, conn := dialTest(t, sshtest.WithTCPForward())
	engine := &droppingDockerd{fakeDockerd: &fakeDockerd{names: map[string]string{}}, drop: func() {}}
	d := newRelayedDocker(engine, newForward(&fakeRelay{}, conn))
	_, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, registryauth.Anonymous, nil)
	var lost *connectionLostError
	if err == nil || errors.As(err, &lost) {
		t.Fatalf("Pull = %v, want the daemon's error as it is: the connection is up", err)
	}
}

// TestLocal: the runner's own daemon takes the relayed Docker host's route
// through the listener it is given: the relay served there under
// LocalHost, the daemon handed no credential, only the user's tag left,
// the listener closed with the runtime.
func TestLocal(t *testing.T) {
	ctx := context.Background()
	creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "secret"}
	var opened []net.Listener
	listen := func() (net.Listener, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err == nil {
			opened = append(opened, l)
		}
		return l, err
	}
	rl, engine := &fakeRelay{}, &fakeDockerd{names: map[string]string{}}
	d := Local(engine, rl, listen)
	ref := "ghcr.io/acme/app@" + relayDigest
	for range 2 {
		if _, err := d.Pull(ctx, ref, nil, creds, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.(interface {
		Tag(ctx context.Context, source, target string) error
	}).Tag(ctx, ref, "ghcr.io/acme/app:1"); err != nil {
		t.Fatal(err)
	}
	settled(d)
	if len(opened) != 1 || !slices.Equal(rl.hosts, []string{LocalHost}) {
		t.Fatalf("listeners %v served to %v, want one, served as %s", opened, rl.hosts, LocalHost)
	}
	if want := "relayed /v2/acme/app/manifests/" + relayDigest; engine.got != want || engine.creds[0] != registryauth.Anonymous {
		t.Errorf("the daemon got %q with %v, want %q with no credentials", engine.got, engine.creds, want)
	}
	if !strings.HasPrefix(engine.ops[0], "pull "+opened[0].Addr().String()+"/") {
		t.Errorf("the daemon pulled %q, want from the listener %s", engine.ops[0], opened[0].Addr())
	}
	settled(d)
	if got := engine.namesOf("sha256:imageid"); !slices.Equal(got, []string{"ghcr.io/acme/app:1"}) {
		t.Errorf("names %v, want only the user's tag (ops %q)", got, engine.ops)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", opened[0].Addr().String(), time.Second); err == nil {
		c.Close()
		t.Errorf("the listener still accepts after Close")
	}
}

// pullHold holds the first Pull of a fake runtime (its onPull) until
// pullTwoAtOnce has started the second.
type pullHold struct {
	started, release chan struct{}
	onPull           func()
}

func newPullHold() *pullHold {
	h := &pullHold{started: make(chan struct{}), release: make(chan struct{})}
	h.onPull = sync.OnceFunc(func() { close(h.started); <-h.release })
	return h
}

// pullTwoAtOnce is pull's order for two images of one digest on one host
// at once: d pulls ref twice, the second while hold keeps the first in
// the runtime's Pull, then ref is tagged with each of tags.
func pullTwoAtOnce(t *testing.T, d interface {
	Pull(ctx context.Context, ref string, platform *ocispec.Platform, creds registryauth.Credentials, progress func(done, total int64)) (bool, error)
	Tag(ctx context.Context, source, target string) error
}, hold *pullHold, ref string, tags ...string) {
	t.Helper()
	ctx := context.Background()
	pulled := make(chan error, 2)
	pull := func() { _, err := d.Pull(ctx, ref, nil, registryauth.Anonymous, nil); pulled <- err }
	go pull()
	<-hold.started
	go pull() // joins the pull in flight, or finds it done
	time.Sleep(20 * time.Millisecond)
	close(hold.release)
	for range 2 {
		if err := <-pulled; err != nil {
			t.Fatal(err)
		}
	}
	for _, tag := range tags {
		if err := d.Tag(ctx, ref, tag); err != nil {
			t.Fatal(err)
		}
	}
}

// countPrefixed counts the calls in a fake's log that begin with prefix.
func countPrefixed(ops []string, prefix string) int {
	n := 0
	for _, op := range ops {
		if strings.HasPrefix(op, prefix) {
			n++
		}
	}
	return n
}
