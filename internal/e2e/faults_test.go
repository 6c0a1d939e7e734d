package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// TestFaults injects registry faults between the action (and the daemon)
// and the real registry. Every case uses credentials that the registry
// accepts on a private repository, so an anonymous fallback would be a bug
// and would show in the log.
func TestFaults(t *testing.T) {
	e := Start(t)
	e.Front.AddUser("faulty", canary, false, "*")
	httpDate := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(http.TimeFormat) }
	cases := []struct {
		name       string
		faults     []ghcrsim.Fault
		inputs     map[string]string
		wantExit   int
		wantInErr  string // for failures: the fault named in the error
		maxReqs    int    // bound on registry requests for the whole run
		maxSeconds float64
	}{
		{name: "burst of 500, 502, 503", faults: []ghcrsim.Fault{
			{Match: "/manifests/", Status: 500}, {Match: "/manifests/", Status: 502}, {Match: "/manifests/", Status: 503}},
			maxReqs: 20, maxSeconds: 30},
		{name: "429 with Retry-After as an HTTP-date", faults: []ghcrsim.Fault{
			{Match: "/manifests/", Status: 429, RetryAfter: httpDate(2 * time.Second)}}, maxReqs: 15, maxSeconds: 30},
		{name: "connection reset in the middle of a blob", faults: []ghcrsim.Fault{
			{Match: "/blobs/sha256:", Reset: true}}, maxReqs: 20, maxSeconds: 60},
		{name: "truncated blob body", faults: []ghcrsim.Fault{
			{Match: "/blobs/sha256:", Truncate: true}}, maxReqs: 20, maxSeconds: 60},
		{name: "slow token endpoint", faults: []ghcrsim.Fault{
			{Match: "/token", Stall: 2 * time.Second}}, maxReqs: 15, maxSeconds: 30},
		{name: "stalled manifest past the timeout", faults: []ghcrsim.Fault{
			{Match: "/manifests/", Stall: time.Minute}}, inputs: map[string]string{"timeout": "5s"},
			wantExit: 1, wantInErr: "timed out", maxReqs: 6, maxSeconds: 20},
		{name: "503 outlasting the retries", faults: []ghcrsim.Fault{
			{Match: "/manifests/", Status: 503}, {Match: "/manifests/", Status: 503}, {Match: "/manifests/", Status: 503}},
			inputs: map[string]string{"retries": "2"}, wantExit: 1, wantInErr: "503", maxReqs: 9, maxSeconds: 30},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := "faults/case" + string(rune('a'+i))
			digest := e.PushRandomImage(t, repo, "1")
			ref := e.Host + "/" + repo + ":1"
			e.RemoveLocalImage(t, ref)
			t.Cleanup(func() { e.RemoveLocalImage(t, ref) })
			e.Front.ResetLog()
			e.Front.Inject(tc.faults...)
			inputs := map[string]string{"image": ref, "username": "faulty", "password": canary}
			for k, v := range tc.inputs {
				inputs[k] = v
			}
			start := time.Now()
			res := e.RunAction(t, inputs)
			took := time.Since(start).Seconds()
			if n := e.Front.Pending(); n != 0 {
				t.Errorf("%d injected faults were never hit", n)
			}
			if res.ExitCode != tc.wantExit {
				t.Fatalf("exit %d, want %d\n%s", res.ExitCode, tc.wantExit, res.Stdout)
			}
			if took > tc.maxSeconds {
				t.Errorf("took %.1fs, bound %.0fs", took, tc.maxSeconds)
			}
			reqs := e.Front.Requests()
			if len(reqs) > tc.maxReqs {
				t.Errorf("%d registry requests, bound %d: a retry storm", len(reqs), tc.maxReqs)
			}
			for _, r := range reqs {
				if r.Path == "/token" && r.BasicUser == "" {
					t.Errorf("an anonymous token request: the fault caused a fallback")
				}
			}
			if res.Outputs["fallback-used"] != "false" {
				t.Errorf("fallback-used=%q", res.Outputs["fallback-used"])
			}
			if tc.wantExit == 0 {
				if res.Outputs["digest"] != digest || !contains(e.LocalImageDigests(t, ref), e.Host+"/"+repo+"@"+digest) {
					t.Errorf("success reported, but the daemon lacks the image with the pushed digest")
				}
				return
			}
			if !strings.Contains(res.Stdout, tc.wantInErr) {
				t.Errorf("the error does not name the fault %q:\n%s", tc.wantInErr, res.Stdout)
			}
			if len(e.LocalImageDigests(t, ref)) != 0 {
				t.Errorf("failure reported, yet the image is in the daemon")
			}
			assertNoSecretLeak(t, res, canary)
		})
	}
}
