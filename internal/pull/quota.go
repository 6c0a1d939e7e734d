package pull

import (
	"fmt"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
)

// guardQuota fails, before any target pulls, the images of every registry
// whose reported pull quota has fewer pulls left than the step needs.
//
// What is counted: one pull per image and target. Docker Hub counts a GET
// of a manifest (an index and its platform manifest together count once)
// and each target's runtime GETs the manifest even when it already holds
// every layer, so a target that has the image costs a pull like one that
// lacks it. A cluster (fleet) counts as one target: its node count is
// known only once the pre-pull runs, so the guard under-counts there.
// The probe's own HEAD costs nothing. Only images whose probe succeeded
// are counted: a failed one pulls nowhere.
func guardQuota(probes []probeOutcome, targets int, fleet bool) {
	if fleet {
		targets = 1
	}
	if targets == 0 {
		return // resolve only: nothing will be pulled
	}
	type tally struct {
		quota  ghcr.Quota
		images int
	}
	per := map[string]*tally{}
	for _, p := range probes {
		if p.err != nil || p.quota == nil || p.source != nil {
			continue // a mirror serves it: upstream's quota is not spent
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
	}
	for i := range probes {
		p := &probes[i]
		if p.err != nil || p.quota == nil || p.source != nil {
			continue
		}
		t := per[p.quota.Registry]
		need := t.images * targets
		if need <= t.quota.Remaining {
			continue
		}
		p.err = &ghcr.QuotaExceeded{Quota: t.quota, Need: need,
			NeedText: fmt.Sprintf("%d %s × %d %s", t.images, plural(t.images, "image"), targets, plural(targets, "target"))}
		p.attempts = append(p.attempts, ghcr.Attempt{Mode: p.creds.Mode, Err: p.err})
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
