// Command ghcr-pull pulls container images with non-interactive registry
// auth, an anonymous fallback when credentials are rejected, and a report of
// exactly what happened. It runs as a GitHub container action or as a plain
// command-line tool.
package main

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ghcr-pull/ghcr-pull/internal/action"
	"github.com/ghcr-pull/ghcr-pull/internal/demo"
	"github.com/ghcr-pull/ghcr-pull/internal/relay"
)

// actionYAML is the action's metadata: the binary's inputs, defaults and
// flags come from it, so the two cannot drift.
//
//go:embed action.yml
var actionYAML []byte

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "demo" {
		os.Exit(demo.Run(ctx, actionYAML, os.Stdout))
	}
	if len(os.Args) == 3 && os.Args[1] == "relay-forward" {
		// cache-path's forwarder beside a containerized action
		// (internal/action/cache.go).
		if err := relay.Forward(ctx, os.Args[2], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	env := action.Env{Getenv: os.Getenv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Metadata: actionYAML}
	os.Exit(action.Run(ctx, os.Args[1:], env))
}
