package action

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/crane"
)

// Docker Hub's quota, read from the probe, is reported in pull-quota and
// the summary; the guard fails the step before the daemon is asked for
// anything when images × targets exceed what is left, naming the quota
// and when it comes back.
func TestPullQuota(t *testing.T) {
	tests := []struct {
		name      string
		remaining string
		inputs    map[string]string
		wantCode  int
		wantPulls int32
		wantClass string
	}{
		{"reported", "76", map[string]string{"destination": "none"}, ExitOK, 0, ""},
		{"enough for the one pull", "1", nil, ExitOK, 1, ""},
		{"spent: failed before any pull", "0", nil, ExitFailed, 0, "quota"},
		{"guard off: pulled anyway", "0", map[string]string{"quota-guard": "false"}, ExitOK, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := startRegistry(t)
			reg.front.SetHeaders("/manifests/", http.Header{
				"Ratelimit-Limit":         {"100;w=21600"},
				"Ratelimit-Remaining":     {tt.remaining + ";w=21600"},
				"Docker-Ratelimit-Source": {"203.0.113.7"},
			})
			engine := startEngine(t, func(w http.ResponseWriter, r *http.Request, call int) {
				pullStream(w, map[string]string{"status": "Downloaded newer image"})
			})
			engine.repoDigests = []string{reg.host + "/acme/public@" + reg.digest(t, "acme/public:1")}
			inputs := map[string]string{"image": reg.host + "/acme/public:1", "auth": "anonymous", "docker-host": engine.host}
			for k, v := range tt.inputs {
				inputs[k] = v
			}
			s := runStep(t, inputs, nil)
			if s.code != tt.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", s.code, tt.wantCode, s.stdout)
			}
			if got := engine.calls.Load(); got != tt.wantPulls {
				t.Errorf("%d daemon pulls, want %d", got, tt.wantPulls)
			}
			var qs []QuotaJSON
			if err := json.Unmarshal([]byte(s.outputs["pull-quota"]), &qs); err != nil || len(qs) != 1 {
				t.Fatalf("pull-quota %q: %v", s.outputs["pull-quota"], err)
			}
			want := QuotaJSON{Registry: reg.host, Limit: 100, Remaining: qs[0].Remaining, WindowSeconds: 21600, Source: "203.0.113.7"}
			if qs[0] != want || qs[0].Remaining < 0 || tt.remaining != "" && itoa(qs[0].Remaining) != tt.remaining {
				t.Errorf("pull-quota %+v, want %+v with remaining %s", qs[0], want, tt.remaining)
			}
			if !strings.Contains(s.summary, "Pull quota of "+reg.host) || !strings.Contains(s.summary, tt.remaining+" of 100 pulls left per 6h0m0s window") {
				t.Errorf("summary lacks the quota:\n%s", s.summary)
			}
			var results []ResultJSON
			_ = json.Unmarshal([]byte(s.outputs["results"]), &results)
			for _, r := range results {
				if r.ErrorClass != tt.wantClass {
					t.Errorf("error_class %q, want %q (%s)", r.ErrorClass, tt.wantClass, r.Error)
				}
			}
			if tt.wantClass == "quota" {
				for _, w := range []string{"has 0 pulls left", "needs 1 (1 image × 1 target)", "6h0m0s window slides", "quota-guard: false"} {
					if !strings.Contains(s.stdout, w) {
						t.Errorf("the error does not say %q:\n%s", w, s.stdout)
					}
				}
			}
		})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// digest is the manifest digest ref (repo:tag) has in the registry.
func (r *testRegistry) digest(t *testing.T, ref string) string {
	t.Helper()
	d, err := crane.Digest(r.host+"/"+ref, crane.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"}))
	if err != nil {
		t.Fatal(err)
	}
	return d
}
