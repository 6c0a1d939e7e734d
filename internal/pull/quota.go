package pull

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/image"
)

// guardQuota fails, before any target pulls, the images of every registry
// whose reported pull quota has fewer pulls left than the step needs.
//
// What is counted: one pull per image and target that lacks it. Docker
// Hub counts a GET of a manifest (an index and its platform manifest
// together count once). A Docker target that already holds the probed
// digest makes no registry request at all for a pull by digest (seen with
// dockerd 20.10: TestPullQuota), so it costs nothing; one that lacks it
// costs one. A target that cannot tag (containerd) pulls by tag and is
// counted whatever it holds, unless a mirror serves it (it renames);
// an unreachable one pulls nothing. A cluster
// (fleet) counts as one target: its nodes are known only once the
// pre-pull runs, so the guard under-counts there; one a mirror serves
// costs nothing. The probe's own HEAD
// costs nothing. Images whose probe failed, or that a mirror serves, do
// not spend upstream's quota.
func guardQuota(ctx context.Context, images []Image, probes []probeOutcome, targets []*openOnce, fleet bool, concurrency int) {
	type tally struct {
		quota          ghcr.Quota
		images, pulls  int
		pairs, holding int
	}
	spends := func(p probeOutcome) bool { return p.err == nil && p.quota != nil }
	// Whether each target lacks each image, asked concurrently within the
	// pulls' own bound: an inspection is a round trip to the host, and
	// asked one after another they made the guard's cost grow with images
	// × targets (docs/benchmarks.md).
	lacking := make([][]bool, len(probes))
	var g errgroup.Group
	g.SetLimit(concurrency)
	for i, p := range probes {
		if !spends(p) || fleet {
			continue
		}
		lacking[i] = make([]bool, len(targets))
		for j, target := range targets {
			g.Go(func() error {
				lacking[i][j] = lacks(ctx, images[i], p, target)
				return nil
			})
		}
	}
	_ = g.Wait()
	per := map[string]*tally{}
	for i, p := range probes {
		if !spends(p) {
			continue
		}
		t, ok := per[p.quota.Registry]
		if !ok {
			t = &tally{quota: *p.quota}
			per[p.quota.Registry] = t
		}
		// The lowest reading is the latest: pulls of other jobs only
		// ever lower it while this step probes.
		if p.quota.Remaining < t.quota.Remaining {
			t.quota = *p.quota
		}
		t.images++
		if fleet {
			t.pairs++
			if p.source != nil {
				t.holding++ // the nodes pull from the mirror
			} else {
				t.pulls++
			}
			continue
		}
		for j := range targets {
			t.pairs++
			if lacking[i][j] {
				t.pulls++
			} else {
				t.holding++
			}
		}
	}
	for i := range probes {
		p := &probes[i]
		if !spends(*p) {
			continue
		}
		t := per[p.quota.Registry]
		if t.pulls <= t.quota.Remaining {
			continue
		}
		nTargets := t.pairs / t.images
		text := fmt.Sprintf("%d %s × %d %s", t.images, plural(t.images, "image"), nTargets, plural(nTargets, "target"))
		if t.holding > 0 {
			text += fmt.Sprintf(", less %d that hold it already or get it from a mirror", t.holding)
		}
		p.err = &ghcr.QuotaExceeded{Quota: t.quota, Need: t.pulls, NeedText: text}
		p.attempts = append(p.attempts, ghcr.Attempt{Mode: p.creds.Mode, Err: p.err})
	}
}

// lacks says whether pulling img onto target will ask the registry for
// its manifest: false for a Docker target that holds the digest already
// (it is pulled by digest), for a target a mirror serves, and for one
// that cannot be reached (it pulls nothing).
func lacks(ctx context.Context, img Image, p probeOutcome, target *openOnce) bool {
	d, err := target.open(ctx)
	if err != nil {
		return false
	}
	pinned := image.Pinned(img.Input, p.digest)
	_, canTag := d.(tagger)
	if _, canRename := d.(renamer); p.source != nil && pinned != "" && (canTag || canRename) {
		return false // pulled from the mirror
	}
	if !canTag || pinned == "" {
		return true // pulled by the user's reference, from the registry
	}
	info, err := d.Inspect(ctx, pinned)
	return err != nil || info.Digest(img.Input, p.digest) != p.digest
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
