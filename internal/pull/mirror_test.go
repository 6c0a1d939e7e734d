package pull

import (
	"context"
	"fmt"
	"io"
	"iter"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/mirror"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
	"github.com/ghcr-pull/ghcr-pull/internal/retry"
)

// simRegistry is an in-process registry with token auth behind the GHCR
// front, which logs every request with the credentials sent.
type simRegistry struct {
	front *ghcrsim.Server
	host  string
	srv   *httptest.Server
}

func startSim(t testing.TB) *simRegistry {
	t.Helper()
	front, err := ghcrsim.New(ghcrsim.Options{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))})
	if err != nil {
		t.Fatal(err)
	}
	front.AddUser("admin", "adminpw", true, "*")
	srv := httptest.NewServer(front)
	t.Cleanup(srv.Close)
	return &simRegistry{front: front, host: strings.TrimPrefix(srv.URL, "http://"), srv: srv}
}

func (s *simRegistry) push(t testing.TB, repo string, img v1.Image) {
	t.Helper()
	ref, _ := name.ParseReference(s.host + "/" + repo)
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"})); err != nil {
		t.Fatal(err)
	}
	s.front.ResetLog()
}

// pullLog records what a target was asked to pull with which
// credentials, and fails the pulls from the hosts in fail.
type pullLog struct {
	mu    sync.Mutex
	refs  []string
	creds []registryauth.Credentials
	fail  map[string]error // by host prefix
}

// record logs a pull (mu held) and returns its host's failure, if any.
func (l *pullLog) record(ref string, creds registryauth.Credentials) error {
	l.refs, l.creds = append(l.refs, ref), append(l.creds, creds)
	for host, err := range l.fail {
		if strings.HasPrefix(ref, host) {
			return err
		}
	}
	return nil
}

// tagDaemon is a Docker-like target: it records what it was asked to
// pull with which credentials, tags, and reports the digests it pulled.
type tagDaemon struct{ pullLog }

func (d *tagDaemon) Pull(_ context.Context, ref string, _ *ocispec.Platform, creds registryauth.Credentials, _ func(int64, int64)) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.record(ref, creds)
	return err == nil, err
}

func (d *tagDaemon) Tag(context.Context, string, string) error { return nil }

func (d *tagDaemon) Inspect(context.Context, string) (image.Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return image.Info{RepoDigests: image.ParseRepoDigests(byDigest(slices.Values(d.refs)))}, nil
}

// byDigest keeps the names by digest: what a daemon's RepoDigests list.
func byDigest(names iter.Seq[string]) []string {
	var rds []string
	for n := range names {
		if strings.Contains(n, "@") {
			rds = append(rds, n)
		}
	}
	return rds
}

// upstreamWithImage is an upstream registry (user upuser, password
// up-secret) holding img under repo:1, and other, an image a mirror may
// serve under the same tag.
func upstreamWithImage(t testing.TB, repo string) (up *simRegistry, img, other v1.Image, digest v1.Hash) {
	t.Helper()
	img, _ = random.Image(64, 1)
	other, _ = random.Image(64, 1)
	digest, _ = img.Digest()
	up = startSim(t)
	up.front.AddUser("upuser", "up-secret", false, "*")
	up.push(t, repo+":1", img)
	return up, img, other, digest
}

// The mirror decision, on real registries: a mirror that serves the
// upstream digest serves the targets, by digest, with its own
// credentials or none; one that answers another digest, or is down, is
// passed over and the results say why; when upstream is over quota, the
// first mirror that answers resolves the image; credentials only ever
// reach the host they belong to.
func TestMirrorChoice(t *testing.T) {
	const repo = "library/app"
	upCreds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "upuser", Password: "up-secret"}
	mirrorCreds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "mirroruser", Password: "mirror-secret"}
	hubQuota := http.Header{"Ratelimit-Limit": {"100;w=21600"}, "Ratelimit-Remaining": {"0;w=21600"}}
	tests := []struct {
		name string
		// mirrors: "same" (serves the upstream image), "other" (another
		// image under the tag), "down", "private" (needs mirrorCreds)
		mirrors      []string
		mirrorCreds  bool
		upstream429  bool
		wantServedBy int // index into mirrors, -1 for upstream
		wantResolved bool
		wantNotes    []string
		wantErr      string
	}{
		{name: "mirror serves the digest", mirrors: []string{"same"}, wantServedBy: 0},
		{name: "different digest never trusted", mirrors: []string{"other", "same"}, wantServedBy: 1, wantNotes: []string{"not trusted"}},
		{name: "only a distrusted mirror: upstream", mirrors: []string{"other"}, wantServedBy: -1, wantNotes: []string{"not trusted"}},
		{name: "mirror down", mirrors: []string{"down", "same"}, wantServedBy: 1, wantNotes: []string{"did not serve"}},
		{name: "mirror with its own credentials", mirrors: []string{"private"}, mirrorCreds: true, wantServedBy: 0},
		{name: "private mirror without credentials is passed over", mirrors: []string{"private"}, wantServedBy: -1, wantNotes: []string{"did not serve"}},
		{name: "upstream over quota: the mirror resolves", mirrors: []string{"same"}, upstream429: true, wantServedBy: 0, wantResolved: true, wantNotes: []string{"quota", "unchecked against upstream"}},
		{name: "upstream over quota, mirror down: fails naming the quota", mirrors: []string{"down"}, upstream429: true, wantServedBy: -1, wantErr: "quota"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, img, other, want := upstreamWithImage(t, repo)
			set := mirror.Set{}
			var sims []*simRegistry
			for _, kind := range tt.mirrors {
				m := startSim(t)
				sims = append(sims, m)
				switch kind {
				case "same", "private":
					m.push(t, repo+":1", img)
				case "other":
					m.push(t, repo+":1", other)
				case "down":
					m.srv.Close()
				}
				if kind != "private" {
					m.front.SetPublic(repo)
				}
				m.front.AddUser("mirroruser", "mirror-secret", false, "*")
				set.Add(up.host, mirror.Mirror{Host: m.host})
			}
			if tt.upstream429 {
				up.front.Inject(ghcrsim.Fault{Match: "/manifests/", Status: 429, Header: hubQuota},
					ghcrsim.Fault{Match: "/manifests/", Status: 429, Header: hubQuota})
			}
			images, _ := ParseImages([]string{up.host + "/" + repo + ":1"})
			d := &tagDaemon{}
			opts := Options{Credentials: upCreds, Mirrors: set, Retry: retry.Policy{Retries: 1, Base: time.Millisecond}}
			if tt.mirrorCreds {
				opts.MirrorCredentials = mirrorCreds
			}
			res := Run(context.Background(), images, []Target{{Name: "local", Open: func(context.Context) (Daemon, error) { return d, nil }}}, opts)
			r := res[0]
			if tt.wantErr != "" {
				if failure.ClassOf(r.Err) != tt.wantErr {
					t.Fatalf("err %v (class %q), want class %q", r.Err, failure.ClassOf(r.Err), tt.wantErr)
				}
			} else if r.Err != nil {
				t.Fatalf("err %v\n%s", r.Err, r.Diagnosis)
			}
			notes := fmt.Sprint(r.MirrorNotes)
			for _, w := range tt.wantNotes {
				if !strings.Contains(notes, w) {
					t.Errorf("notes lack %q:\n%s", w, notes)
				}
			}
			// A mirror that answered another digest is flagged so, for
			// the summary's warning: the flag, never the words, says it.
			for _, n := range r.MirrorNotes {
				if n.Distrusted != strings.Contains(n.Text, "not trusted") {
					t.Errorf("note %q: distrusted %v", n.Text, n.Distrusted)
				}
			}
			if tt.wantErr != "" {
				if len(d.refs) != 0 {
					t.Errorf("the daemon was asked to pull %v", d.refs)
				}
				return
			}
			wantHost := up.host
			if tt.wantServedBy >= 0 {
				wantHost = sims[tt.wantServedBy].host
				if r.ServedBy != wantHost {
					t.Errorf("served by %q, want %q", r.ServedBy, wantHost)
				}
			} else if r.ServedBy != "" {
				t.Errorf("served by %q, want upstream", r.ServedBy)
			}
			if (r.ResolvedBy != "") != tt.wantResolved {
				t.Errorf("resolved by %q", r.ResolvedBy)
			}
			if len(d.refs) != 1 || d.refs[0] != wantHost+"/"+repo+"@"+want.String() {
				t.Errorf("daemon pulled %v, want %s/%s@%s", d.refs, wantHost, repo, want)
			}
			if r.Digest != want.String() || r.ImageRef != up.host+"/"+repo+"@"+want.String() {
				t.Errorf("digest %s image-ref %s", r.Digest, r.ImageRef)
			}
			// Credentials go only where they belong: the daemon gets the
			// mirror's own (or none) for a mirror, never the upstream's
			// password or token; each server saw only its own user.
			if tt.wantServedBy >= 0 {
				c := d.creds[0]
				if c.Password == upCreds.Password || (c.RegistryToken != "" && !tt.mirrorCreds) {
					t.Errorf("the daemon got %v (token %v) for the mirror", c, c.RegistryToken != "")
				}
				if tt.mirrorCreds && c.Username != "mirroruser" {
					t.Errorf("the mirror's pull lacks its credentials: %v", c)
				}
			}
			for _, req := range up.front.Requests() {
				if req.BasicUser != "" && req.BasicUser != "upuser" {
					t.Errorf("upstream received %s's credentials", req.BasicUser)
				}
			}
			for i, m := range sims {
				for _, req := range m.front.Requests() {
					if req.BasicUser == "upuser" || req.BasicPassword == upCreds.Password {
						t.Errorf("mirror %d received the upstream credentials", i)
					}
					if req.BasicUser != "" && !tt.mirrorCreds {
						t.Errorf("mirror %d received credentials %q it was not given", i, req.BasicUser)
					}
				}
			}
		})
	}
}

// A mirror that served the probe but fails on a target leaves that
// target to upstream, with the upstream credentials.
func TestMirrorFailsOnTarget(t *testing.T) {
	const repo = "library/app"
	img, _ := random.Image(64, 1)
	up, m := startSim(t), startSim(t)
	up.push(t, repo+":1", img)
	m.push(t, repo+":1", img)
	up.front.SetPublic(repo)
	m.front.SetPublic(repo)
	images, _ := ParseImages([]string{up.host + "/" + repo + ":1"})
	d := &tagDaemon{pullLog{fail: map[string]error{m.host: failure.FromDaemon(500, "connection refused", true)}}}
	set := mirror.Set{}
	set.Add(up.host, mirror.Mirror{Host: m.host})
	res := Run(context.Background(), images, []Target{{Name: "local", Open: func(context.Context) (Daemon, error) { return d, nil }}},
		Options{Credentials: registryauth.Anonymous, Mirrors: set})
	r := res[0]
	if r.Err != nil || r.ServedBy != "" {
		t.Fatalf("err %v served by %q", r.Err, r.ServedBy)
	}
	if len(d.refs) != 2 || !strings.HasPrefix(d.refs[1], up.host+"/") {
		t.Errorf("pulls %v: want the mirror, then upstream", d.refs)
	}
	if !strings.Contains(fmt.Sprint(r.MirrorNotes), "pulled from upstream") {
		t.Errorf("notes %q", r.MirrorNotes)
	}
}

// A registry whose name does not resolve (a runner with no route to it)
// is left to its mirror; without a mirror it stays bad input.
func TestMirrorForUnresolvableRegistry(t *testing.T) {
	const repo = "library/app"
	img, _ := random.Image(64, 1)
	want, _ := img.Digest()
	m := startSim(t)
	m.push(t, repo+":1", img)
	m.front.SetPublic(repo)
	images, _ := ParseImages([]string{"registry.invalid/" + repo + ":1"})
	for _, withMirror := range []bool{true, false} {
		set := mirror.Set{}
		if withMirror {
			set.Add("registry.invalid", mirror.Mirror{Host: m.host})
		}
		d := &tagDaemon{}
		res := Run(context.Background(), images, []Target{{Name: "local", Open: func(context.Context) (Daemon, error) { return d, nil }}},
			Options{Credentials: registryauth.Anonymous, Mirrors: set})
		r := res[0]
		if !withMirror {
			if failure.ClassOf(r.Err) != "bad-input:image" {
				t.Errorf("without a mirror: %v", r.Err)
			}
			continue
		}
		if r.Err != nil || r.ResolvedBy != m.host || r.ServedBy != m.host || r.Digest != want.String() {
			t.Errorf("err %v resolved %q served %q digest %s", r.Err, r.ResolvedBy, r.ServedBy, r.Digest)
		}
	}
}

// renameDaemon is a containerd-like target: no tag call, but Rename gives
// an image pulled under a mirror's name the user's names in its place.
// Inspect answers by name, as CRI's ImageStatus does; a pull by tag also
// names <repository>@<digest>, as the CRI plugin does.
type renameDaemon struct {
	pullLog
	digest  string
	names   map[string]bool // names held, all of one image
	renames []string
}

func (d *renameDaemon) Pull(_ context.Context, ref string, _ *ocispec.Platform, creds registryauth.Credentials, _ func(int64, int64)) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.record(ref, creds); err != nil {
		return false, err
	}
	if d.names == nil {
		d.names = map[string]bool{}
	}
	d.names[ref] = true
	if !strings.Contains(ref, "@") {
		d.names[ref[:strings.LastIndex(ref, ":")]+"@"+d.digest] = true
	}
	return true, nil
}

func (d *renameDaemon) Rename(_ context.Context, from string, names ...string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.renames = append(d.renames, from+" → "+strings.Join(names, ", "))
	for _, n := range names {
		d.names[n] = true
	}
	delete(d.names, from)
	return nil
}

func (d *renameDaemon) Inspect(_ context.Context, ref string) (image.Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.names[ref] {
		return image.Info{}, fmt.Errorf("no image %s", ref)
	}
	return image.Info{RepoDigests: image.ParseRepoDigests(byDigest(maps.Keys(d.names)))}, nil
}

// A containerd target (no tag call, renames) is pointed at the mirror
// that serves the digest as a Docker target is: it pulls
// <mirror>/<repo>@<digest> with the mirror's credentials or none, and ends
// with the user's names only (<repository>@<digest> and the tag, the
// mirror's name removed). A mirror with another digest for the tag is
// never used: the target pulls the user's reference from upstream, with
// upstream's credentials. A mirror that fails on the target leaves it to
// upstream, by the user's reference.
func TestMirrorServesRenamingTarget(t *testing.T) {
	const repo = "library/app"
	upCreds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "upuser", Password: "up-secret"}
	mirrorCreds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "mirroruser", Password: "mirror-secret"}
	up, img, other, want := upstreamWithImage(t, repo)
	input := up.host + "/" + repo + ":1"
	pinned := up.host + "/" + repo + "@" + want.String()
	images, _ := ParseImages([]string{input})

	for _, tt := range []struct {
		name, kind   string
		failOnTarget bool
		wantPulls    []string // "mirror" stands for the mirror's host
		wantServed   bool
	}{
		{name: "the mirror serves the digest", kind: "private", wantPulls: []string{"mirror/" + repo + "@" + want.String()}, wantServed: true},
		{name: "another digest for the tag: upstream, by the user's reference", kind: "other", wantPulls: []string{input}},
		{name: "the mirror fails on the target: upstream, by the user's reference", kind: "same", failOnTarget: true,
			wantPulls: []string{"mirror/" + repo + "@" + want.String(), input}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := startSim(t)
			m.front.AddUser("mirroruser", "mirror-secret", false, "*")
			if tt.kind == "other" {
				m.push(t, repo+":1", other)
			} else {
				m.push(t, repo+":1", img)
			}
			if tt.kind != "private" {
				m.front.SetPublic(repo)
			}
			set := mirror.Set{}
			set.Add(up.host, mirror.Mirror{Host: m.host})
			d := &renameDaemon{digest: want.String()}
			if tt.failOnTarget {
				d.fail = map[string]error{m.host: failure.FromDaemon(500, "connection refused", true)}
			}
			opts := Options{Credentials: upCreds, Mirrors: set}
			if tt.kind == "private" {
				opts.MirrorCredentials = mirrorCreds
			}
			r := Run(context.Background(), images, []Target{{Name: "node", Open: func(context.Context) (Daemon, error) { return d, nil }}}, opts)[0]
			if r.Err != nil {
				t.Fatalf("err %v\n%s", r.Err, r.Diagnosis)
			}
			var wantPulls []string
			for _, p := range tt.wantPulls {
				wantPulls = append(wantPulls, strings.Replace(p, "mirror/", m.host+"/", 1))
			}
			if strings.Join(d.refs, " ") != strings.Join(wantPulls, " ") {
				t.Errorf("pulls %q, want %q", d.refs, wantPulls)
			}
			if (r.ServedBy == m.host) != tt.wantServed || r.Digest != want.String() || r.ImageRef != pinned {
				t.Errorf("served by %q, digest %s, image_ref %s", r.ServedBy, r.Digest, r.ImageRef)
			}
			for i, ref := range d.refs {
				c := d.creds[i]
				fromMirror := strings.HasPrefix(ref, m.host+"/")
				if fromMirror && (c.Password == upCreds.Password || c.Username == upCreds.Username) {
					t.Errorf("the pull from the mirror got the upstream credentials")
				}
				if fromMirror && tt.kind == "private" && c.Username != "mirroruser" {
					t.Errorf("the pull from the mirror lacks its credentials: %+v", c)
				}
				if !fromMirror && (c.Username == mirrorCreds.Username || c.Password == mirrorCreds.Password) {
					t.Errorf("the pull from upstream got the mirror's credentials")
				}
			}
			if tt.wantServed {
				if len(d.renames) != 1 || d.renames[0] != wantPulls[0]+" → "+pinned+", "+input {
					t.Errorf("renames %q, want the mirror's name to %s and %s", d.renames, pinned, input)
				}
				for n := range d.names {
					if strings.HasPrefix(n, m.host) {
						t.Errorf("the mirror's name %s stayed", n)
					}
				}
			} else if len(d.renames) != 0 {
				t.Errorf("renamed %q after an upstream pull", d.renames)
			}
			for _, req := range m.front.Requests() {
				if req.BasicUser == "upuser" || req.BasicPassword == upCreds.Password {
					t.Errorf("the mirror received the upstream credentials")
				}
			}
		})
	}
}

// tagRenameDaemon is a relayed containerd host: it tags (the relay's own
// pulls by digest) and renames.
type tagRenameDaemon struct {
	renameDaemon
	tags []string
}

func (d *tagRenameDaemon) Tag(_ context.Context, source, target string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tags = append(d.tags, source+" → "+target)
	d.names[target] = true
	return nil
}

// A target that tags and renames (relayed containerd) is renamed after a
// mirror's pull, not tagged: the mirror's name goes.
func TestMirrorRenamesRatherThanTags(t *testing.T) {
	const repo = "library/app"
	up, img, _, want := upstreamWithImage(t, repo)
	m := startSim(t)
	m.push(t, repo+":1", img)
	m.front.SetPublic(repo)
	set := mirror.Set{}
	set.Add(up.host, mirror.Mirror{Host: m.host})
	images, _ := ParseImages([]string{up.host + "/" + repo + ":1"})
	d := &tagRenameDaemon{renameDaemon: renameDaemon{digest: want.String()}}
	r := Run(context.Background(), images, []Target{{Name: "node", Open: func(context.Context) (Daemon, error) { return d, nil }}},
		Options{Credentials: registryauth.Credentials{Mode: registryauth.ModeToken, Username: "upuser", Password: "up-secret"}, Mirrors: set})[0]
	if r.Err != nil || r.ServedBy != m.host {
		t.Fatalf("err %v, served by %q", r.Err, r.ServedBy)
	}
	if len(d.tags) != 0 || len(d.renames) != 1 {
		t.Errorf("tags %q, renames %q: want one rename and no tag", d.tags, d.renames)
	}
	for n := range d.names {
		if strings.HasPrefix(n, m.host) {
			t.Errorf("the mirror's name %s stayed", n)
		}
	}
}
