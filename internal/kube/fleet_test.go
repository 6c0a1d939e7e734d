package kube

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// A *Config is pull's Fleet: the Secret holds the credentials' username
// and password for the reference's registry (never the registry token),
// anonymous credentials make no Secret, and every node is reported in name
// order.
func TestConfigPullAll(t *testing.T) {
	digest := "sha256:" + strings.Repeat("a", 64)
	ref := "reg.example:5000/acme/app@" + digest
	type report struct {
		node, digest, class string
	}
	pullAll := func(f *fakeAPI, creds registryauth.Credentials) []report {
		t.Helper()
		cfg := f.config(t, time.Minute)
		var got []report
		err := cfg.PullAll(context.Background(), ref, creds, nil, func(node, digest string, _ time.Duration, err error) {
			got = append(got, report{node, digest, failure.ClassOf(err)})
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	f := newFakeAPI(t, readyNode("b"), readyNode("a"))
	f.status = func(string) obj { return obj{"name": "pull", "imageID": ref} }
	creds := registryauth.Credentials{Mode: registryauth.ModeToken, Username: "u", Password: "pw-canary", RegistryToken: "token-canary"}
	got := pullAll(f, creds)
	want := []report{{"a", digest, ""}, {"b", digest, ""}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("reported %+v, want %+v", got, want)
	}
	var sec struct{ Data map[string][]byte }
	b, _ := json.Marshal(f.posted["secrets"])
	if err := json.Unmarshal(b, &sec); err != nil {
		t.Fatal(err)
	}
	var dc struct {
		Auths map[string]struct{ Username, Password string }
	}
	if err := json.Unmarshal(sec.Data[".dockerconfigjson"], &dc); err != nil || dc.Auths["reg.example:5000"].Password != "pw-canary" || dc.Auths["reg.example:5000"].Username != "u" {
		t.Errorf("secret %s: %+v (%v)", sec.Data[".dockerconfigjson"], dc, err)
	}
	if strings.Contains(string(sec.Data[".dockerconfigjson"]), "token-canary") {
		t.Errorf("the registry token reached the pull Secret")
	}

	f = newFakeAPI(t, readyNode("a"))
	f.status = func(string) obj { return obj{"name": "pull", "imageID": ref} }
	if got := pullAll(f, registryauth.Anonymous); len(got) != 1 || got[0].node != "a" {
		t.Errorf("anonymous: reported %+v", got)
	}
	if s, ok := f.posted["secrets"]; ok {
		t.Errorf("anonymous pull made a Secret: %v", s)
	}
}
