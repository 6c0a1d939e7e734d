package sshdeploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/cri"
	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy/sshtest"
)

// fakeK8sIO is containerd's k8s.io namespace as the relayed route sees
// it: names → image IDs, where a CRI pull adds the name pulled and the
// image ID record (as containerd's CRI plugin does) and fetches the
// manifest path over HTTP from the reference's host, as containerd would
// from the forward.
type fakeK8sIO struct {
	mu        sync.Mutex
	names     map[string]string
	ops       []string
	creds     []registryauth.Credentials
	got       string // what the forward answered
	nameErr   error
	unnameErr error
	onPull    func() // called as Pull begins
}

func (c *fakeK8sIO) Fetch(ctx context.Context, ref string, _ *ocispec.Platform, creds registryauth.Credentials) (string, error) {
	if c.onPull != nil {
		c.onPull()
	}
	c.mu.Lock()
	_, had := c.names[fakeConfig]
	c.mu.Unlock()
	got, err := pullThroughForward(ctx, ref, had)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = got
	c.creds = append(c.creds, creds)
	c.ops = append(c.ops, "pull "+ref)
	c.names[ref] = fakeConfig
	c.names[fakeConfig] = fakeConfig
	return fakeConfig, nil
}

func (c *fakeK8sIO) Inspect(_ context.Context, ref string) (image.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, "inspect "+ref)
	n, err := cri.CanonicalName(ref)
	if err != nil {
		return image.Info{}, err
	}
	id, ok := c.names[n]
	if !ok {
		id, ok = c.names[ref]
	}
	if !ok {
		return image.Info{}, fmt.Errorf("containerd has no image %s", ref)
	}
	info := image.Info{ID: id, Platform: image.PlatformOf("linux", "amd64", "")}
	for name, i := range c.names {
		if i == id && strings.Contains(name, "@") {
			info.RepoDigests = append(info.RepoDigests, image.ParseRepoDigests([]string{name})...)
		}
	}
	return info, nil
}

func (c *fakeK8sIO) Lookup(_ context.Context, ref string) (cri.Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, "lookup "+ref)
	id, ok := c.names[ref]
	if !ok {
		return cri.Image{}, fmt.Errorf("not found: %s", ref)
	}
	return cri.Image{ID: id}, nil
}

// Give is Name with no wait for CRI: the ops say which.
func (c *fakeK8sIO) Give(ctx context.Context, img cri.Image, name string) error {
	return c.name(ctx, "give", img, name)
}

func (c *fakeK8sIO) Name(ctx context.Context, img cri.Image, name string) error {
	return c.name(ctx, "name", img, name)
}

// InspectAs is Inspect that wants ref to be image id.
func (c *fakeK8sIO) InspectAs(ctx context.Context, ref, id string) (image.Info, error) {
	info, err := c.Inspect(ctx, ref)
	c.mu.Lock()
	c.ops[len(c.ops)-1] = "inspect-as " + ref
	c.mu.Unlock()
	if err == nil && info.ID != id {
		err = fmt.Errorf("%s is %s, not %s", ref, info.ID, id)
	}
	return info, err
}

func (c *fakeK8sIO) name(_ context.Context, op string, img cri.Image, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, op+" "+img.ID+" "+name)
	if c.nameErr != nil {
		return c.nameErr
	}
	if img.ID == "" {
		return fmt.Errorf("no image to name %s", name)
	}
	c.names[name] = img.ID
	return nil
}

func (c *fakeK8sIO) Unname(_ context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, "unname "+name)
	if c.unnameErr != nil {
		return c.unnameErr
	}
	delete(c.names, name)
	return nil
}

func (c *fakeK8sIO) Runtime() (string, string) { return "containerd", "k8s.io" }
func (c *fakeK8sIO) Close() error              { return nil }

func (c *fakeK8sIO) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.names {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func TestRelayedContainerd(t *testing.T) {
	ctx := context.Background()
	creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "secret", RegistryToken: "tok"}

	t.Run("a tag: pulled from the forward with no auth, named as a direct CRI pull names it, no loopback name", func(t *testing.T) {
		srv, conn := dialTest(t, sshtest.WithTCPForward())
		rl, ctrd := &fakeRelay{}, &fakeK8sIO{names: map[string]string{}}
		d := newRelayedContainerd(ctrd, newForward(rl, conn))
		ref := "ghcr.io/acme/app@" + relayDigest
		if pulled, err := d.Pull(ctx, ref, nil, creds, nil); err != nil || !pulled {
			t.Fatalf("Pull = %v, %v; want a new image", pulled, err)
		}
		checkRelayedPull(t, srv, rl, creds, ctrd.creds, ctrd.got)
		if err := d.Tag(ctx, ref, "ghcr.io/acme/app:1"); err != nil {
			t.Fatal(err)
		}
		want := []string{"ghcr.io/acme/app:1", "ghcr.io/acme/app@" + relayDigest, "sha256:imageid"}
		if got := ctrd.all(); !slices.Equal(got, want) {
			t.Errorf("names in k8s.io %q, want %q (ops %q)", got, want, ctrd.ops)
		}
		info, err := d.Inspect(ctx, "ghcr.io/acme/app:1")
		if err != nil {
			t.Fatal(err)
		}
		// pull's image_ref stays <repository>@<digest>: the name exists.
		if info.Ref != "" || len(info.RepoDigests) != 1 || info.RepoDigests[0].String() != ref {
			t.Errorf("Inspect = %+v, want no Ref and %s in RepoDigests", info, ref)
		}
		if pulled, err := d.Pull(ctx, ref, nil, creds, nil); err != nil || pulled {
			t.Errorf("Pull again = %v, %v; want the image reported as there already", pulled, err)
		}
		if got := ctrd.all(); !slices.Equal(got, want) {
			t.Errorf("after a second pull, names %q (ops %q)", got, ctrd.ops)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		checkForwardClosed(t, srv)
	})

	t.Run("two images of one digest at once: one pull, both tags", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		hold := newPullHold()
		ctrd := &fakeK8sIO{names: map[string]string{}, onPull: hold.onPull}
		d := newRelayedContainerd(ctrd, newForward(&fakeRelay{}, conn))
		pullTwoAtOnce(t, d, hold, "ghcr.io/acme/app@"+relayDigest, "ghcr.io/acme/app:1", "ghcr.io/acme/app:latest")
		pulls := countPrefixed(ctrd.ops, "pull ")
		want := []string{"ghcr.io/acme/app:1", "ghcr.io/acme/app:latest", "ghcr.io/acme/app@" + relayDigest, "sha256:imageid"}
		if got := ctrd.all(); pulls != 1 || !slices.Equal(got, want) {
			t.Errorf("%d pulls, names %q, want 1 and %q (ops %q)", pulls, got, want, ctrd.ops)
		}
	})

	t.Run("a digest of a familiar name: named as containerd names it", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		ctrd := &fakeK8sIO{names: map[string]string{}}
		d := newRelayedContainerd(ctrd, newForward(&fakeRelay{}, conn))
		ref := "busybox@" + relayDigest
		if _, err := d.Pull(ctx, ref, nil, creds, nil); err != nil {
			t.Fatal(err)
		}
		want := []string{"docker.io/library/busybox@" + relayDigest, "sha256:imageid"}
		if got := ctrd.all(); !slices.Equal(got, want) {
			t.Errorf("names %q, want %q (ops %q)", got, want, ctrd.ops)
		}
		if err := d.Tag(ctx, ref, "busybox"); err != nil {
			t.Fatal(err)
		}
		if got := ctrd.all(); !slices.Contains(got, "docker.io/library/busybox:latest") {
			t.Errorf("a bare repository is not tagged latest: %q", got)
		}
	})

	t.Run("a mirror's reference: renamed to the user's names, no mirror name left", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		ctrd := &fakeK8sIO{names: map[string]string{}}
		d := newRelayedContainerd(ctrd, newForward(&fakeRelay{}, conn))
		ref := "mirror.example/acme/app@" + relayDigest
		if _, err := d.Pull(ctx, ref, nil, creds, nil); err != nil {
			t.Fatal(err)
		}
		if err := d.Rename(ctx, ref, "ghcr.io/acme/app@"+relayDigest, "ghcr.io/acme/app:1"); err != nil {
			t.Fatal(err)
		}
		want := []string{"ghcr.io/acme/app:1", "ghcr.io/acme/app@" + relayDigest, "sha256:imageid"}
		if got := ctrd.all(); !slices.Equal(got, want) {
			t.Errorf("names %q, want %q (ops %q)", got, want, ctrd.ops)
		}
		if err := d.Rename(ctx, "ghcr.io/acme/other@"+relayDigest, "x"); err == nil {
			t.Error("renamed an image it did not relay")
		}
	})

	t.Run("naming fails: the loopback name goes all the same", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		ctrd := &fakeK8sIO{names: map[string]string{}, nameErr: errors.New("images service down")}
		d := newRelayedContainerd(ctrd, newForward(&fakeRelay{}, conn))
		_, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, creds, nil)
		if err == nil || !strings.Contains(err.Error(), "images service down") {
			t.Fatalf("err = %v", err)
		}
		for _, n := range ctrd.all() {
			if strings.HasPrefix(n, "127.0.0.1:") {
				t.Errorf("the relay's name %s is left (ops %q)", n, ctrd.ops)
			}
		}
	})

	t.Run("Tag of an image not relayed is refused", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		d := newRelayedContainerd(&fakeK8sIO{names: map[string]string{}}, newForward(&fakeRelay{}, conn))
		if err := d.Tag(ctx, "ghcr.io/acme/app@"+relayDigest, "ghcr.io/acme/app:1"); err == nil {
			t.Fatal("tagged an image the route did not relay")
		}
	})

	t.Run("sshd refusing the forward names AllowTcpForwarding", func(t *testing.T) {
		_, conn := dialTest(t)
		ctrd := &fakeK8sIO{names: map[string]string{}}
		d := newRelayedContainerd(ctrd, newForward(&fakeRelay{}, conn))
		_, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, creds, nil)
		var fe *forwardError
		if !errors.As(err, &fe) || failure.ClassOf(err) != "ssh-forwarding-refused" {
			t.Fatalf("err = %v (class %q), want a ForwardError", err, failure.ClassOf(err))
		}
		if len(ctrd.ops) != 0 {
			t.Errorf("containerd was asked %q", ctrd.ops)
		}
	})

	t.Run("an upstream refusal comes back classified, before the host is asked", func(t *testing.T) {
		_, conn := dialTest(t, sshtest.WithTCPForward())
		ctrd := &fakeK8sIO{names: map[string]string{}}
		rej := &failure.Rejected{Response: failure.Response{Status: 403}}
		d := newRelayedContainerd(ctrd, newForward(&fakeRelay{allowErr: rej}, conn))
		_, err := d.Pull(ctx, "ghcr.io/acme/app@"+relayDigest, nil, creds, nil)
		if !errors.As(err, &rej) {
			t.Fatalf("err = %v, want the relay's Rejected", err)
		}
		if len(ctrd.ops) != 0 {
			t.Errorf("containerd was asked %q", ctrd.ops)
		}
	})
}

// TestRelayedContainerdRoundTrips: each call to the host is a round trip
// over its network. The CRI pull's own answer says whether the image is
// new (by its ID), so the host's images are not listed nor the image
// inspected around it; the loopback name is looked up once, and Tag names
// the image Pull found without looking it up again. The loopback name goes
// all the same, and an error removing it is the pull's.
func TestRelayedContainerdRoundTrips(t *testing.T) {
	ctx := context.Background()
	ref := "ghcr.io/acme/app@" + relayDigest
	for _, tc := range []struct {
		name      string
		had       bool // the node holds the image before the pull
		unnameErr error
		wantErr   string
		wantOps   []string // the loopback name spelled 127.0.0.1
	}{
		{
			name:    "pull (nothing asked first: the relay tells the image new), one lookup, give and unname, tag, the tag inspected once CRI reports it",
			wantOps: []string{"pull 127.0.0.1", "lookup 127.0.0.1", "give sha256:imageid " + ref, "give sha256:imageid ghcr.io/acme/app:1", "unname 127.0.0.1", "inspect-as ghcr.io/acme/app:1"},
		},
		{
			name: "a node that had the image: not new, by CRI's answer, and not inspected before the naming", had: true,
			wantOps: []string{"pull 127.0.0.1", "lookup 127.0.0.1", "give sha256:imageid " + ref, "give sha256:imageid ghcr.io/acme/app:1", "unname 127.0.0.1", "inspect-as ghcr.io/acme/app:1"},
		},
		{
			name:      "removing the loopback name fails: the pull reports it",
			unnameErr: errors.New("metadata store locked"),
			wantErr:   "metadata store locked",
			wantOps:   []string{"pull 127.0.0.1", "lookup 127.0.0.1", "give sha256:imageid " + ref, "unname 127.0.0.1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, conn := dialTest(t, sshtest.WithTCPForward())
			ctrd := &fakeK8sIO{names: map[string]string{}, unnameErr: tc.unnameErr}
			if tc.had {
				ctrd.names[fakeConfig] = fakeConfig
			}
			d := newRelayedContainerd(ctrd, newForward(&fakeRelay{}, conn))
			defer d.Close()
			pulled, err := d.Pull(ctx, ref, nil, registryauth.Anonymous, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Pull = %v, want %q", err, tc.wantErr)
				}
			} else {
				if err != nil || pulled == tc.had {
					t.Fatalf("Pull = %v, %v; want new: %v", pulled, err, !tc.had)
				}
				if err := d.Tag(ctx, ref, "ghcr.io/acme/app:1"); err != nil {
					t.Fatal(err)
				}
				if info, err := d.Inspect(ctx, "ghcr.io/acme/app:1"); err != nil || info.ID != fakeConfig {
					t.Fatalf("Inspect = %+v, %v", info, err)
				}
			}
			ctrd.mu.Lock()
			ops := loopbackSpelled(ctrd.ops)
			ctrd.mu.Unlock()
			// Naming and unnaming run at once: their order is not fixed.
			if !slices.Equal(slices.Sorted(slices.Values(ops)), slices.Sorted(slices.Values(tc.wantOps))) || ops[0] != "pull 127.0.0.1" || ops[1] != "lookup 127.0.0.1" {
				t.Errorf("calls to the host %q, want %q", ops, tc.wantOps)
			}
		})
	}
}

// Open with a relay gives a containerd host the relayed route, which can
// tag: pull then pulls the probed digest and names it. The remote forward
// is asked for while the runtime opens, before any pull. Closing it closes
// the connection.
func TestOpenRelayedContainerd(t *testing.T) {
	client := sshtest.NewSigner(t, "ed25519")
	srv := startServer(t, client.PublicKey(), sshtest.WithTCPForward())
	s := &Settings{runtime: kindContainerd, containerdSocket: startFakeContainerd(t),
		config: dialConfig{Signer: client, HostKeys: insecureIgnoreHostKey()}, Relay: &fakeRelay{}}
	rt, err := Open(context.Background(), srv.host("root"), s)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if _, ok := rt.(interface {
		Tag(ctx context.Context, source, target string) error
	}); !ok {
		t.Errorf("%T cannot tag: pull would pull the user's tag through the relay", rt)
	}
	if name, ns := runtimeOf(rt); name != "containerd" || ns != "k8s.io" {
		t.Errorf("runtime %s %s", name, ns)
	}
	waitUntil(t, "the forward is granted before any pull", func() bool { return len(srv.Forwards()) == 1 })
	// Closing the runtime closes the connection: containerd's adapter owns it.
	if err := rt.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	waitUntil(t, "the server sees the connection closed", func() bool { return srv.Open.Load() == 0 })
}
