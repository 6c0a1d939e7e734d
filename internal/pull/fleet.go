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
func pullFleet(ctx context.Context, img Image, p probeOutcome, opts Options) []Result {
	fleet := opts.Fleet
	ref := image.Pinned(img.Input, p.digest)
	var creds *ghcr.Credentials
	if !p.creds.IsAnonymous() {
		c := p.creds
		c.RegistryToken = "" // the kubelet takes only username and password
		creds = &c
	}
	members, err := fleet.PullAll(ctx, ref, creds, nil)
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
		r := p.result(img, m.Name, m.Duration)
		r.Runtime = fleet.Runtime()
		if a, ok := anonymous[m.Name]; ok {
			m = a
			r.AuthMode, r.FallbackUsed = ghcr.AuthAnonymous, true
			r.Duration += a.Duration
			if r.CredentialError == "" {
				r.CredentialError = rejectionText(rejected[m.Name])
			}
		}
		// The platform's manifest digest counts as the probed one; no
		// digest at all does not (without a platform, p.platform is "").
		if m.Err == nil && m.Digest != p.digest && (m.Digest == "" || m.Digest != p.platform) {
			m.Err = &DriftError{Image: img.Input, Target: m.Name, Expected: p.digest, Got: m.Digest}
		}
		if m.Err != nil {
			r = r.failed(m.Err, fmt.Sprintf("%s on node %s: %v", img.Input, m.Name, m.Err))
		} else {
			r.Pulled = true // imagePullPolicy Always: every member pulled
		}
		out = append(out, r)
	}
	return out
}
