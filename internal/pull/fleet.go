package pull

import (
	"github.com/ghcr-pull/ghcr-pull/internal/image"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"

	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Fleet is a destination of many members reached in one call: a
// Kubernetes cluster, whose nodes' kubelets pull (*kube.Config satisfies
// it). PullAll pulls ref (always repo@digest) onto every member, or only
// onto those named in only, with creds as Daemon.Pull takes them
// (registryauth.Anonymous: none), and reports each member's outcome through
// report: the digest it holds, how long it took, its error. Its error is
// for the call as a whole (the cluster refused, no member selected).
type Fleet interface {
	Name() string
	Runtime() string
	PullAll(ctx context.Context, ref string, creds registryauth.Credentials, only []string, report func(member, digest string, took time.Duration, err error)) error
}

// member is one member's outcome of a Fleet's PullAll.
type member struct {
	name string
	// digest is the digest the member reports it holds.
	digest   string
	duration time.Duration
	err      error
}

// pullAll collects what fleet reports of one PullAll, in its order.
func pullAll(ctx context.Context, fleet Fleet, ref string, creds registryauth.Credentials, only []string) ([]member, error) {
	var members []member
	err := fleet.PullAll(ctx, ref, creds, only, func(name, digest string, took time.Duration, err error) {
		members = append(members, member{name: name, digest: digest, duration: took, err: err})
	})
	return members, err
}

// pullFleet pulls the probed digest onto every member of the fleet with
// the credentials the probe succeeded with, and retries the members that
// refused them anonymously when the fallback allows it, as for any other
// target: the cluster may reach the registry differently from the runner.
//
// When a mirror serves the digest, every member pulls
// <mirror>/<repo>@<digest> with the mirror's credentials or none. A
// kubelet names an image by the reference it pulled, so the node then
// holds the content (keyed by digest in containerd's store) under the
// mirror's name, not the user's: a pod's later pull of the user's
// reference finds every blob there and asks the registry only to resolve
// it (docs/mirrors.md, TestKubeMirror). Members the mirror fails are
// pulled from upstream, when upstream resolved the digest.
func pullFleet(ctx context.Context, img Image, p probeOutcome, opts Options) []Result {
	src := p.source
	if src == nil {
		return fleetFromUpstream(ctx, img, p, opts, nil)
	}
	fleet := opts.Fleet
	members, err := pullAll(ctx, fleet, src.ref.String(), fleetCreds(src.creds), nil)
	if err != nil {
		r := p.result(img, fleet.Name(), 0).failed(err, fmt.Sprintf("could not pre-pull from mirror %s on %s: %v", src.mirror, fleet.Name(), err))
		r.Runtime = fleet.Runtime()
		return []Result{r}
	}
	var again []string
	failed := map[string]error{}
	for _, m := range members {
		if m.err != nil && p.resolvedBy == "" {
			again = append(again, m.name)
			failed[m.name] = m.err
		}
	}
	upstream := map[string]Result{}
	if len(again) > 0 {
		for _, r := range fleetFromUpstream(ctx, img, p, opts, again) {
			r.MirrorNotes = append(r.MirrorNotes, MirrorNote{Text: fmt.Sprintf("the pull from mirror %s failed on %s (%v); pulled from upstream", src.mirror, r.Host, failed[r.Host])})
			upstream[r.Host] = r
		}
	}
	out := make([]Result, 0, len(members))
	for _, m := range members {
		if r, ok := upstream[m.name]; ok {
			out = append(out, r)
			continue
		}
		r := memberResult(img, p, fleet, m)
		if r.Err == nil {
			r.ServedBy = src.mirror.String()
		}
		if r.AuthMode != "" {
			r.AuthMode, r.Provider = src.creds.Mode, ""
		}
		out = append(out, r)
	}
	return out
}

// fleetCreds is what a fleet is given of creds: Anonymous for none, and
// no registry token (kubelets take only a username and password; the token
// would sit in a pull Secret for nothing).
func fleetCreds(creds registryauth.Credentials) registryauth.Credentials {
	if creds.IsAnonymous() {
		return registryauth.Anonymous
	}
	creds.RegistryToken = ""
	return creds
}

// fleetFromUpstream pulls the probed digest from the image's own registry
// onto every member (or those in only), with the per-member fallback.
func fleetFromUpstream(ctx context.Context, img Image, p probeOutcome, opts Options, only []string) []Result {
	fleet := opts.Fleet
	ref := image.Pinned(img.Input, p.digest)
	creds := fleetCreds(p.creds)
	members, err := pullAll(ctx, fleet, ref, creds, only)
	if err != nil {
		r := p.result(img, fleet.Name(), 0).failed(err, fmt.Sprintf("could not pre-pull on %s: %v", fleet.Name(), err))
		r.Runtime = fleet.Runtime()
		return []Result{r}
	}
	rejected := map[string]error{}
	var retry []string
	for _, m := range members {
		var rej *failure.Rejected
		if !creds.IsAnonymous() && opts.Fallback && errors.As(m.err, &rej) {
			rejected[m.name] = m.err
			retry = append(retry, m.name)
		}
	}
	anonymous := map[string]member{}
	if len(retry) > 0 {
		again, err := pullAll(ctx, fleet, ref, registryauth.Anonymous, retry)
		for _, m := range again {
			anonymous[m.name] = m
		}
		for _, name := range retry {
			m, ok := anonymous[name]
			if !ok && err != nil {
				m = member{name: name, err: err}
				anonymous[name] = m
			}
			opts.Events.Fallback(img, AtTarget, name, rejected[name], m.err)
		}
	}
	out := make([]Result, 0, len(members))
	for _, m := range members {
		if a, ok := anonymous[m.name]; ok {
			d := m.duration
			m = a
			m.duration += d
			r := memberResult(img, p, fleet, m)
			r.FallbackUsed = true
			if r.Err == nil {
				r.AuthMode = registryauth.ModeAnonymous
			}
			if r.CredentialError == "" {
				r.CredentialError = rejectionText(rejected[m.name])
			}
			out = append(out, r)
			continue
		}
		out = append(out, memberResult(img, p, fleet, m))
	}
	return out
}

// memberResult is one member's result: the probed digest, or a failure.
func memberResult(img Image, p probeOutcome, fleet Fleet, m member) Result {
	r := p.result(img, m.name, m.duration)
	r.Runtime = fleet.Runtime()
	// The platform's manifest digest counts as the probed one; no
	// digest at all does not (without a platform, p.platform is "").
	if m.err == nil && m.digest != p.digest && (m.digest == "" || m.digest != p.platform) {
		m.err = &DriftError{Image: img.Input, Target: m.name, Expected: p.digest, Got: m.digest}
	}
	if m.err != nil {
		return r.failed(m.err, fmt.Sprintf("%s on node %s: %v", img.Input, m.name, m.err))
	}
	r.Pulled = true // imagePullPolicy Always: every member pulled
	return r
}
