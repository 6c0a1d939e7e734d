// Package demo runs ghcr-pull's real action code path against an embedded
// registry that answers auth like GHCR, so a newcomer sees the whole job,
// fallback included, with no network and no set-up: `ghcr-pull demo`.
package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/client"

	"github.com/ghcr-pull/ghcr-pull/internal/action"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// scenario is one workflow step the demo runs.
type scenario struct {
	title    string
	inputs   map[string]string
	wantExit int
}

// Run starts the embedded registry, runs the scenarios and prints what a
// workflow would see. It returns the process exit code.
func Run(ctx context.Context, metadata []byte, out io.Writer) (code int) {
	front, err := ghcrsim.New(ghcrsim.Options{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))})
	if err != nil {
		fmt.Fprintln(out, "demo:", err)
		return 1
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(out, "demo:", err)
		return 1
	}
	srv := &http.Server{Handler: front}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	host := l.Addr().String()

	front.AddUser("octocat", "ghp_good_token", true, "*")
	front.SetPublic("acme/public-app")
	for _, repo := range []string{"acme/public-app", "acme/private-app"} {
		if err := push(host+"/"+repo+":1.2.3", "octocat", "ghp_good_token"); err != nil {
			fmt.Fprintln(out, "demo: pushing the sample images:", err)
			return 1
		}
	}

	destination := "none"
	if daemonAnswers(ctx) {
		destination = "docker"
	}
	fmt.Fprintf(out, "Embedded GHCR-like registry on %s: acme/public-app (public), acme/private-app (private).\n", host)
	fmt.Fprintf(out, "Tokens it rejects are answered 403 DENIED at the token endpoint, as ghcr.io does.\n")
	fmt.Fprintf(out, "Destination: %s (%s).\n", destination, map[string]string{
		"docker": "a Docker daemon answers, images are pulled into it",
		"none":   "no Docker daemon answers, so only digests and access are verified"}[destination])

	scenarios := []scenario{
		{title: "A token that can read the private package", inputs: map[string]string{
			"image": host + "/acme/private-app:1.2.3", "username": "octocat", "password": "ghp_good_token"}},
		{title: "A token GHCR rejects, on a public package: anonymous fallback", inputs: map[string]string{
			"image": host + "/acme/public-app:1.2.3", "username": "octocat", "password": "ghp_expired_token"}},
		{title: "A fork pull request (no secrets): anonymous with a notice", inputs: map[string]string{
			"image": host + "/acme/public-app:1.2.3"}},
		{title: "A rejected token on a private package: a clear failure", wantExit: action.ExitFailed, inputs: map[string]string{
			"image": host + "/acme/private-app:1.2.3", "username": "octocat", "password": "ghp_expired_token"}},
	}
	// What the demo puts into a Docker daemon is removed at the end: the
	// images are named after the registry's random port, so they would
	// pile up run after run.
	var pulled []string
	defer func() {
		if err := removeImages(context.WithoutCancel(ctx), pulled, out); err != nil {
			fmt.Fprintln(out, "demo:", err)
			code = 1
		}
	}()
	for i, sc := range scenarios {
		sc.inputs["destination"] = destination
		sc.inputs["timeout"] = "2m"
		fmt.Fprintf(out, "\n=== %d. %s\n", i+1, sc.title)
		got, err := runStep(ctx, metadata, sc.inputs, out)
		if err != nil {
			fmt.Fprintln(out, "demo:", err)
			return 1
		}
		if destination == "docker" && got == action.ExitOK {
			pulled = append(pulled, sc.inputs["image"])
		}
		if got != sc.wantExit {
			fmt.Fprintf(out, "demo: step exited %d, expected %d\n", got, sc.wantExit)
			code = 1
		}
	}
	return code
}

// removeImages removes from the Docker daemon the images refs name (and so
// every other reference to them: the pinned repo@digest, the tag).
func removeImages(ctx context.Context, refs []string, out io.Writer) error {
	if len(refs) == 0 {
		return nil
	}
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var ids []string
	for _, ref := range refs {
		res, err := cli.ImageInspect(ctx, ref)
		if err != nil {
			return fmt.Errorf("removing the demo's images: %s: %w", ref, err)
		}
		if !slices.Contains(ids, res.ID) {
			ids = append(ids, res.ID)
		}
	}
	for _, id := range ids {
		if _, err := cli.ImageRemove(ctx, id, client.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			return fmt.Errorf("removing the demo's image %s: %w", id, err)
		}
	}
	fmt.Fprintf(out, "\nRemoved the %d images the demo pulled from the Docker daemon.\n", len(ids))
	return nil
}

func push(ref, user, password string) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	img, err := random.Image(64<<10, 2)
	if err != nil {
		return err
	}
	return remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: user, Password: password}))
}

func daemonAnswers(ctx context.Context) bool {
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return false
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = cli.Ping(ctx, client.PingOptions{})
	return err == nil
}

// runStep runs the action as the runner would, with inputs as INPUT_*
// variables and the file commands in a temporary directory, then prints
// the log, the outputs and the summary.
func runStep(ctx context.Context, metadata []byte, inputs map[string]string, out io.Writer) (int, error) {
	dir, err := os.MkdirTemp("", "ghcr-pull-demo-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	env := map[string]string{
		"GITHUB_ACTIONS":      "true",
		"GITHUB_OUTPUT":       filepath.Join(dir, "output"),
		"GITHUB_STEP_SUMMARY": filepath.Join(dir, "summary"),
		"DOCKER_HOST":         os.Getenv("DOCKER_HOST"),
	}
	for k, v := range inputs {
		env["INPUT_"+strings.ToUpper(k)] = v
	}
	var log bytes.Buffer
	code := action.Run(ctx, nil, action.Env{
		Getenv:   func(k string) string { return env[k] },
		Stdin:    strings.NewReader(""),
		Stdout:   &log,
		Stderr:   &log,
		Metadata: metadata,
	})
	fmt.Fprintf(out, "--- log (exit %d)\n%s", code, asShown(log.String()))
	data, _ := os.ReadFile(env["GITHUB_OUTPUT"])
	outputs := parseOutputs(string(data))
	names := make([]string, 0, len(outputs))
	for n := range outputs {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(out, "--- outputs")
	for _, n := range names {
		fmt.Fprintf(out, "%s=%s\n", n, outputs[n])
	}
	summary, _ := os.ReadFile(env["GITHUB_STEP_SUMMARY"])
	fmt.Fprintf(out, "--- job summary\n%s", summary)
	return code, nil
}

// asShown is the log as the runner displays it: the ::add-mask:: commands
// are not shown (one line says how many values they masked), and a masked
// value, should one appear, is shown as ***.
func asShown(log string) string {
	var masks, kept []string
	for _, l := range strings.SplitAfter(log, "\n") {
		if v, ok := strings.CutPrefix(l, "::add-mask::"); ok {
			masks = append(masks, strings.TrimRight(v, "\r\n"))
			continue
		}
		kept = append(kept, l)
	}
	// Longest first: a value may hold a shorter one.
	sort.Slice(masks, func(i, j int) bool { return len(masks[i]) > len(masks[j]) })
	shown := strings.Join(kept, "")
	for _, m := range masks {
		if m != "" {
			shown = strings.ReplaceAll(shown, m, "***")
		}
	}
	if len(masks) == 0 {
		return shown
	}
	return fmt.Sprintf("(%d values masked by ::add-mask::, hidden here as the runner hides them)\n%s", len(masks), shown)
}

// parseOutputs reads the heredoc form the action writes.
func parseOutputs(data string) map[string]string {
	out := map[string]string{}
	lines := strings.Split(data, "\n")
	for i := 0; i < len(lines); i++ {
		n, delim, ok := strings.Cut(lines[i], "<<")
		if !ok {
			continue
		}
		var val []string
		for i++; i < len(lines) && lines[i] != delim; i++ {
			val = append(val, lines[i])
		}
		out[n] = strings.Join(val, "\n")
	}
	return out
}
