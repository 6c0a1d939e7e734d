package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"
)

// The suite checks, after every test and every stopper has run, that this
// test process left nothing behind on the machine: no network namespace it
// made, no mount or process under its directories, no image or container
// naming its registry. Only what this process made counts, so runs of
// other checkouts on the same machine are never blamed.

var runPaths = struct {
	sync.Mutex
	dirs       []string
	namespaces []string
}{}

// ownPath records a directory this process made (its processes and
// mounts live under it).
func ownPath(dir string) {
	runPaths.Lock()
	defer runPaths.Unlock()
	runPaths.dirs = append(runPaths.dirs, dir)
}

// ownNamespace records a network namespace this process made.
func ownNamespace(ns string) {
	runPaths.Lock()
	defer runPaths.Unlock()
	runPaths.namespaces = append(runPaths.namespaces, ns)
}

// dockerLeftovers lists images and containers that name this run's
// registry; the daemon must still be up.
func dockerLeftovers(e *Env) []string {
	if e == nil || e.Docker == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []string
	imgs, err := e.Docker.ImageList(ctx, client.ImageListOptions{All: true})
	if err != nil {
		return []string{"listing images: " + err.Error()}
	}
	for _, img := range imgs.Items {
		for _, ref := range append(append([]string{}, img.RepoTags...), img.RepoDigests...) {
			if strings.HasPrefix(ref, e.Host+"/") {
				out = append(out, "image "+ref)
				break
			}
		}
	}
	cs, err := e.Docker.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return append(out, "listing containers: "+err.Error())
	}
	for _, c := range cs.Items {
		if strings.HasPrefix(c.Image, e.Host+"/") {
			out = append(out, fmt.Sprintf("container %s (%s)", c.ID[:12], c.Image))
		}
	}
	return out
}

// hostLeftovers lists namespaces, mounts and processes of this run that
// outlived Shutdown.
func hostLeftovers() []string {
	runPaths.Lock()
	dirs := append([]string(nil), runPaths.dirs...)
	namespaces := append([]string(nil), runPaths.namespaces...)
	runPaths.Unlock()
	var out []string
	if len(namespaces) > 0 {
		list, _ := exec.Command("ip", "netns", "list").Output()
		for _, ns := range namespaces {
			for _, line := range strings.Split(string(list), "\n") {
				if f := strings.Fields(line); len(f) > 0 && f[0] == ns {
					out = append(out, "network namespace "+ns)
				}
			}
		}
	}
	if len(dirs) == 0 {
		return out
	}
	under := func(s string) bool {
		for _, d := range dirs {
			if strings.Contains(s, d) {
				return true
			}
		}
		return false
	}
	if mi, err := os.ReadFile("/proc/1/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			if under(line) {
				out = append(out, "mount "+line)
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' || p.Name() == fmt.Sprint(os.Getpid()) {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err == nil && under(string(cmd)) {
			out = append(out, fmt.Sprintf("process %s: %s", p.Name(), strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " ")))
		}
	}
	return out
}
