package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/ghcrsim"
)

// dockerHubQuota is what Docker Hub sends on manifest answers.
func dockerHubQuota(remaining string) http.Header {
	return http.Header{
		"Ratelimit-Limit":         {"100;w=21600"},
		"Ratelimit-Remaining":     {remaining + ";w=21600"},
		"Docker-Ratelimit-Source": {"203.0.113.7"},
	}
}

// TestPullQuota: the real registry behind the front, which adds Docker
// Hub's quota headers. The quota is read from the probe's HEAD (never a
// GET, which Docker Hub would count) and reported; the guard stops a step
// that cannot finish before the daemon asks the registry for anything; a
// 429 with the quota headers is waited out per Retry-After, and without
// one fails at once naming the quota.
func TestPullQuota(t *testing.T) {
	e := Start(t)
	t.Cleanup(e.Front.ResetLog) // no injected 429 outlives the test
	cases := []struct {
		name        string
		remaining   string
		fault       *ghcrsim.Fault
		inputs      map[string]string
		wantExit    int
		wantInOut   []string
		wantDaemon  bool // the daemon reached the registry
		minSeconds  float64
		wantQuotaOK bool // pull-quota output reports the reading
	}{
		{name: "enough left: reported and pulled", remaining: "76", wantDaemon: true, wantQuotaOK: true},
		{name: "fewer left than images × targets: failed before any pull", remaining: "1", wantExit: 1,
			wantInOut: []string{"has 1 pulls left, and this step needs 2 (2 images × 1 target)", "6h0m0s window slides"}, wantQuotaOK: true},
		{name: "guard off pulls anyway", remaining: "1", inputs: map[string]string{"quota-guard": "false"}, wantDaemon: true, wantQuotaOK: true},
		{name: "429 with the quota and Retry-After is waited out", remaining: "5",
			fault:      &ghcrsim.Fault{Match: "/manifests/", Status: 429, RetryAfter: "2", Header: dockerHubQuota("0")},
			wantDaemon: true, minSeconds: 2, wantInOut: []string{"retry 1 in 2s", "quota of"}, wantQuotaOK: true},
		{name: "429 with the quota and no Retry-After fails naming it", remaining: "0",
			fault:    &ghcrsim.Fault{Match: "/manifests/", Status: 429, Header: dockerHubQuota("0")},
			wantExit: 1, wantInOut: []string{"quota of", "is spent (429 Too Many Requests", "0 of 100 pulls left", "203.0.113.7"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := "quota/case" + string(rune('a'+i))
			e.PushRandomImage(t, repo, "1")
			e.PushRandomImage(t, repo, "2")
			e.Front.SetPublic(repo)
			refs := []string{e.Host + "/" + repo + ":1", e.Host + "/" + repo + ":2"}
			for _, ref := range refs {
				e.RemoveLocalImage(t, ref)
				t.Cleanup(func() { e.RemoveLocalImage(t, ref) })
			}
			e.Front.SetHeaders("/manifests/", dockerHubQuota(tc.remaining))
			t.Cleanup(func() { e.Front.SetHeaders("", nil) })
			e.Front.ResetLog()
			if tc.fault != nil {
				// Both images' probes meet it: the image concurrency is 3.
				e.Front.Inject(*tc.fault, *tc.fault)
			}
			inputs := map[string]string{"image": strings.Join(refs, "\n"), "auth": "anonymous"}
			for k, v := range tc.inputs {
				inputs[k] = v
			}
			start := time.Now()
			res := e.RunAction(t, inputs)
			took := time.Since(start).Seconds()
			if res.ExitCode != tc.wantExit {
				t.Fatalf("exit %d, want %d\n%s", res.ExitCode, tc.wantExit, res.Stdout)
			}
			if took < tc.minSeconds {
				t.Errorf("took %.1fs: the Retry-After of %.0fs was not waited", took, tc.minSeconds)
			}
			for _, w := range tc.wantInOut {
				if !strings.Contains(res.Stdout, w) {
					t.Errorf("the log does not say %q:\n%s", w, res.Stdout)
				}
			}
			// The front's log: the probe only HEADs manifests; a GET is
			// a counted pull, and only a daemon makes one.
			probeGets, daemonReqs := 0, 0
			for _, r := range e.Front.Requests() {
				fromDaemon := !strings.HasPrefix(r.UserAgent, "ghcr-pull")
				if fromDaemon {
					daemonReqs++
				}
				if !fromDaemon && r.Method == http.MethodGet && strings.Contains(r.Path, "/manifests/") {
					probeGets++
				}
			}
			if probeGets != 0 {
				t.Errorf("the probe made %d manifest GETs: it spent quota", probeGets)
			}
			if (daemonReqs > 0) != tc.wantDaemon {
				t.Errorf("%d daemon requests to the registry, want any: %v", daemonReqs, tc.wantDaemon)
			}
			var qs []struct {
				Registry  string `json:"registry"`
				Limit     int    `json:"limit"`
				Remaining int    `json:"remaining"`
				Source    string `json:"source"`
			}
			if err := json.Unmarshal([]byte(res.Outputs["pull-quota"]), &qs); err != nil {
				t.Fatalf("pull-quota %q: %v", res.Outputs["pull-quota"], err)
			}
			if tc.wantQuotaOK && (len(qs) != 1 || qs[0].Registry != e.Host || qs[0].Limit != 100 || qs[0].Source != "203.0.113.7") {
				t.Errorf("pull-quota %+v", qs)
			}
			if tc.wantQuotaOK && !strings.Contains(res.Summary, "Pull quota of "+e.Host) {
				t.Errorf("summary lacks the quota:\n%s", res.Summary)
			}
			for _, ref := range refs {
				has := len(e.LocalImageDigests(t, ref)) > 0
				if has != (tc.wantExit == 0) {
					t.Errorf("%s in the daemon: %v, exit %d", ref, has, res.ExitCode)
				}
			}
			if i == 0 {
				// Why the guard counts only targets that lack the image:
				// with none left, a second run over images the daemon
				// holds passes the guard, and its pulls by digest ask
				// the registry for no manifest (nothing Docker Hub counts).
				e.Front.SetHeaders("/manifests/", dockerHubQuota("0"))
				e.Front.ResetLog()
				if again := e.RunAction(t, inputs); again.ExitCode != 0 {
					t.Fatalf("second run, quota 0, images held: exit %d\n%s", again.ExitCode, again.Stdout)
				}
				gets := 0
				for _, r := range e.Front.Requests() {
					if !strings.HasPrefix(r.UserAgent, "ghcr-pull") && r.Method == http.MethodGet && strings.Contains(r.Path, "/manifests/") {
						gets++
					}
				}
				if gets != 0 {
					t.Errorf("the daemon made %d manifest GETs for images it held: they would spend quota the guard did not count", gets)
				}
			}
		})
	}
}
