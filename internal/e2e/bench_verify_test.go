package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ghcr-pull/ghcr-pull/internal/verify"
	"github.com/ghcr-pull/ghcr-pull/internal/verify/verifytest"
)

// TestVerifyCost measures what verification adds per image against the
// real CLI doing the same check on its own: wall time and registry
// requests of verify.Verify (in-process, as the action runs it, with a
// fresh connection, ping and token each time) and of `cosign verify` /
// `cosign verify-attestation` (a process, as a workflow step would run
// it), alternating the two so load on the machine hits both alike. The
// issue's bound: Verify takes at most cosign's time and no more requests.
func TestVerifyCost(t *testing.T) {
	e := Start(t)
	c := newCosign(t, e)
	key, pub := c.keyPair(t, "team")
	pubPEM, _ := os.ReadFile(pub)
	ss, err := verifytest.New()
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := ss.TrustedRoot()
	trFile := filepath.Join(c.dir, "trusted_root.json")
	if err := os.WriteFile(trFile, tr, 0o644); err != nil {
		t.Fatal(err)
	}
	admin := remote.WithAuth(e.admin())

	keyDigest := e.pushDigest(t, "cost/key", "1")
	c.sign(t, key, keyDigest)
	keylessDigest := e.pushDigest(t, "cost/keyless", "1")
	l, err := ss.LegacyKeyless(testWorkflow, verify.GitHubIssuer, verifytest.SimpleSigning(keylessDigest.Context().String(), keylessDigest.DigestStr()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifytest.WriteLegacy(keylessDigest, []verifytest.Legacy{l}, admin); err != nil {
		t.Fatal(err)
	}
	attestDigest := e.pushDigest(t, "cost/attest", "1")
	b, err := ss.Bundle(testWorkflow, verify.GitHubIssuer, verifytest.Statement(attestDigest.DigestStr(), verify.SLSAProvenanceV1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifytest.AttachBundle(attestDigest, b, verify.SLSAProvenanceV1, admin); err != nil {
		t.Fatal(err)
	}

	trust := []string{"--trusted-root", trFile, "--insecure-ignore-sct", "--allow-insecure-registry"}
	cases := []struct {
		name   string
		policy map[verify.Setting]string
		d      name.Digest
		cosign []string
	}{
		{"cosign-key", map[verify.Setting]string{verify.SettingMethod: "cosign-key", verify.SettingKey: string(pubPEM)}, keyDigest,
			[]string{"verify", "--key", pub, "--insecure-ignore-tlog=true", "--allow-insecure-registry", keyDigest.String()}},
		{"cosign-keyless", map[verify.Setting]string{verify.SettingMethod: "cosign-keyless", verify.SettingIdentity: testWorkflow, verify.SettingIssuer: verify.GitHubIssuer, verify.SettingTrustedRoot: trFile}, keylessDigest,
			append([]string{"verify", "--certificate-identity", testWorkflow, "--certificate-oidc-issuer", verify.GitHubIssuer}, append(trust, keylessDigest.String())...)},
		{"github-attestation", map[verify.Setting]string{verify.SettingMethod: "github-attestation", verify.SettingRepository: "octo/app", verify.SettingTrustedRoot: trFile}, attestDigest,
			append([]string{"verify-attestation", "--new-bundle-format", "--type", verify.SLSAProvenanceV1, "--certificate-identity", testWorkflow, "--certificate-oidc-issuer", verify.GitHubIssuer}, append(trust, attestDigest.String())...)},
	}
	runs := 5
	if testing.Short() {
		runs = 2
	}
	rows := []string{"| method | verify.Verify median (min–max) | requests | cosign median (min–max) | requests | ratio |", "|---|---|---|---|---|---|"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, d := parsePolicy(t, tc.policy), tc.d
			var ours, theirs []time.Duration
			var ourReqs, theirReqs int
			for i := 0; i < runs; i++ {
				e.Front.ResetLog()
				start := time.Now()
				if _, err := verify.Verify(context.Background(), p, d, e.admin()); err != nil {
					t.Fatalf("Verify: %v", err)
				}
				ours = append(ours, time.Since(start))
				ourReqs = len(e.Front.Requests())

				e.Front.ResetLog()
				start = time.Now()
				if out, err := c.run(t, tc.cosign...); err != nil {
					t.Fatalf("cosign %s: %v\n%s", tc.cosign[0], err, lastLinesOf(out, 5))
				}
				theirs = append(theirs, time.Since(start))
				theirReqs = len(e.Front.Requests())
			}
			mo, mt := median(ours), median(theirs)
			rows = append(rows, fmt.Sprintf("| %s | %s (%s–%s) | %d | %s (%s–%s) | %d | %.2f× |", tc.name,
				ms(mo), ms(slices.Min(ours)), ms(slices.Max(ours)), ourReqs,
				ms(mt), ms(slices.Min(theirs)), ms(slices.Max(theirs)), theirReqs, float64(mo)/float64(mt)))
			if mo > mt {
				t.Errorf("Verify's median %s exceeds cosign's %s", mo, mt)
			}
			if ourReqs > theirReqs {
				t.Errorf("Verify made %d registry requests, cosign %d", ourReqs, theirReqs)
			}
		})
	}
	t.Logf("cost per image, %d alternating runs each:\n%s", runs, strings.Join(rows, "\n"))
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

// TestVerifyBinarySize builds the release binary (as the Dockerfile does)
// twice: as shipped, and with -tags noverify, which must drop sigstore-go
// altogether (no module of it in the binary's build info), so the figure is
// what verification costs a runner's download.
func TestVerifyBinarySize(t *testing.T) {
	if testing.Short() {
		t.Skip("two release builds")
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	build := func(out string, extra ...string) (raw, gz int64) { return buildRelease(t, root, out, extra...) }
	modules := func(bin string) string { return binaryModules(t, bin) }
	with, withGz := build(filepath.Join(dir, "with"))
	off, offGz := build(filepath.Join(dir, "noverify"), "-tags", "noverify")
	mb := func(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
	t.Logf("release binary (CGO_ENABLED=0 -trimpath -ldflags='-s -w'), raw / gzipped:\n"+
		"| build | binary | gzipped |\n|---|---|---|\n| as shipped (with internal/verify) | %s | %s |\n| -tags noverify | %s | %s |",
		mb(with), mb(withGz), mb(off), mb(offGz))
	const sigstore = "github.com/sigstore/sigstore-go"
	if !strings.Contains(modules(filepath.Join(dir, "with")), sigstore) {
		t.Fatalf("the shipped binary does not link %s: verification is not wired in", sigstore)
	}
	// The tag must really drop sigstore-go, not just a few functions.
	if m := modules(filepath.Join(dir, "noverify")); strings.Contains(m, sigstore) {
		t.Errorf("-tags noverify still links %s", sigstore)
	}
	if with <= off {
		t.Errorf("-tags noverify saved nothing: %d <= %d bytes", with, off)
	}
}

// buildRelease builds the release binary as the Dockerfile does
// (CGO_ENABLED=0 -trimpath -ldflags='-s -w') into out, with extra build
// flags, and returns its size raw and gzipped (the image layer is gzipped:
// what a runner downloads).
func buildRelease(t *testing.T, root, out string, extra ...string) (raw, gz int64) {
	t.Helper()
	args := append([]string{"build", "-p", "2", "-trimpath", "-ldflags=-s -w", "-o", out}, extra...)
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", extra, err, o)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	_, _ = w.Write(b)
	_ = w.Close()
	return int64(len(b)), int64(z.Len())
}

// binaryModules is go version -m of a binary: the modules linked into it.
func binaryModules(t *testing.T, bin string) string {
	t.Helper()
	o, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m %s: %v\n%s", bin, err, o)
	}
	return string(o)
}

// releaseBound is the stripped release binary's ceiling (issue 24): the
// Kubernetes destination, with client-go's typed clientset, had taken it
// from 23.8 to 55.2 MiB.
const releaseBound = 28 << 20

// TestReleaseBinarySize builds the release binary and fails above
// releaseBound, and when it links a package that registers every API group
// of Kubernetes (the cause of the 55 MiB) or client-go's REST machinery.
func TestReleaseBinarySize(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "ghcr-pull")
	raw, gz := buildRelease(t, root, bin)
	t.Logf("release binary: %d bytes (%.2f MiB), gzipped %d bytes (%.2f MiB); bound %.0f MiB",
		raw, float64(raw)/(1<<20), gz, float64(gz)/(1<<20), float64(releaseBound)/(1<<20))
	if raw > releaseBound {
		t.Errorf("the release binary is %.2f MiB, above the %.0f MiB bound", float64(raw)/(1<<20), float64(releaseBound)/(1<<20))
	}
	// go version -m names modules (client-go is one, for its transport);
	// the packages are go list's, with the release build's settings.
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var linked []string
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"k8s.io/client-go/kubernetes", "k8s.io/client-go/rest", "k8s.io/client-go/dynamic", "k8s.io/api/"} {
			if pkg == banned || strings.HasPrefix(pkg, banned+"/") || (strings.HasSuffix(banned, "/") && strings.HasPrefix(pkg, banned)) {
				linked = append(linked, pkg)
			}
		}
	}
	if len(linked) > 0 {
		t.Errorf("the release binary links %d banned packages (client-go's clientsets, REST client or k8s.io/api types; see docs/kubernetes.md), among them %s",
			len(linked), strings.Join(linked[:min(len(linked), 5)], ", "))
	}
	if !strings.Contains(binaryModules(t, bin), "k8s.io/client-go") {
		t.Errorf("the release binary does not link k8s.io/client-go: is the Kubernetes destination wired in?")
	}
}
