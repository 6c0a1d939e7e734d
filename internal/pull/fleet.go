package pull

import (
	"github.com/ghcr-pull/ghcr-pull/internal/image"

	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
)

// Fleet is a destination of many members reached in one call: a
// Kubernetes cluster, whose nodes' kubelets pull. PullAll pulls ref (always
// repo@digest) onto every member, or only onto those named in only, with
// creds (nil: anonymously), and reports each member. Its error is for the
// call as a whole (the cluster refused, no member selected).
type Fleet interface {
	Name() string
	Runtime() string
	PullAll(ctx context.Context, ref string, creds *ghcr.Credentials, only []string) ([]Member, error)
}

// Member is one member's outcome of a Fleet's PullAll.
type Member struct {
	Name string
	// Digest is the digest the member reports it holds.
	Digest   string
	Duration time.Duration
	Err      error
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
	members, err := fleet.PullAll(ctx, src.ref.String(), fleetCreds(src.creds), nil)
	if err != nil {
		r := p.result(img, fleet.Name(), 0).failed(err, fmt.Sprintf("could not pre-pull from mirror %s on %s: %v", src.mirror, fleet.Name(), err))
		r.Runtime = fleet.Runtime()
		return []Result{r}
	}
	var again []string
	failed := map[string]error{}
	for _, m := range members {
		if m.Err != nil && p.resolvedBy == "" {
			again = append(again, m.Name)
			failed[m.Name] = m.Err
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
		if r, ok := upstream[m.Name]; ok {
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

// fleetCreds is what a fleet is given of creds: nil for none, and no
// registry token (kubelets take only a username and password; the token
// would sit in a pull Secret for nothing).
func fleetCreds(creds ghcr.Credentials) *ghcr.Credentials {
	if creds.IsAnonymous() {
		return nil
	}
	creds.RegistryToken = ""
	return &creds
}

// fleetFromUpstream pulls the probed digest from the image's own registry
// onto every member (or those in only), with the per-member fallback.
func fleetFromUpstream(ctx context.Context, img Image, p probeOutcome, opts Options, only []string) []Result {
	fleet := opts.Fleet
	ref := image.Pinned(img.Input, p.digest)
	creds := fleetCreds(p.creds)
	members, err := fleet.PullAll(ctx, ref, creds, only)
	if err != nil {
		r := p.result(img, fleet.Name(), 0).failed(err, fmt.Sprintf("could not pre-pull on %s: %v", fleet.Name(), err))
		r.Runtime = fleet.Runtime()
		return []Result{r}
	}
	rejected := map[string]error{}
	var retry []string
	for _, m := range members {
		var rej *failure.Rejected
		if creds != nil && opts.Fallback && errors.As(m.Err, &rej) {
			rejected[m.Name] = m.Err
			retry = append(retry, m.Name)
		}
	}
	anonymous := map[string]Member{}
	if len(retry) > 0 {
		again, err := fleet.PullAll(ctx, ref, nil, retry)
		for _, m := range again {
			anonymous[m.Name] = m
		}
		for _, name := range retry {
			m, ok := anonymous[name]
			if !ok && err != nil {
				m = Member{Name: name, Err: err}
				anonymous[name] = m
			}
			opts.Events.Fallback(img, AtTarget, name, rejected[name], m.Err)
		}
	}
	out := make([]Result, 0, len(members))
	for _, m := range members {
		if a, ok := anonymous[m.Name]; ok {
			d := m.Duration
			m = a
			m.Duration += d
			r := memberResult(img, p, fleet, m)
			r.FallbackUsed = true
			if r.Err == nil {
				r.AuthMode = ghcr.AuthAnonymous
			}
			if r.CredentialError == "" {
				r.CredentialError = rejectionText(rejected[m.Name])
			}
			out = append(out, r)
			continue
		}
		out = append(out, memberResult(img, p, fleet, m))
	}
	return out
}

// memberResult is one member's result: the probed digest, or a failure.
func memberResult(img Image, p probeOutcome, fleet Fleet, m Member) Result {
	r := p.result(img, m.Name, m.Duration)
	r.Runtime = fleet.Runtime()
	// The platform's manifest digest counts as the probed one; no
	// digest at all does not (without a platform, p.platform is "").
	if m.Err == nil && m.Digest != p.digest && (m.Digest == "" || m.Digest != p.platform) {
		m.Err = &DriftError{Image: img.Input, Target: m.Name, Expected: p.digest, Got: m.Digest}
	}
	if m.Err != nil {
		return r.failed(m.Err, fmt.Sprintf("%s on node %s: %v", img.Input, m.Name, m.Err))
	}
	r.Pulled = true // imagePullPolicy Always: every member pulled
	return r
}
