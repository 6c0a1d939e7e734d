package ghcrsim

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func start(t *testing.T) (*Server, string) {
	t.Helper()
	s, err := New(Options{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.AddUser("admin", "adminpw", true, "*")
	s.AddUser("reader", "readerpw", false, "acme/private")
	s.SetPublic("acme/public")
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, repo := range []string{"acme/public", "acme/private"} {
		ref, _ := name.ParseReference(host + "/" + repo + ":1")
		img, _ := random.Image(128, 1)
		if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "admin", Password: "adminpw"})); err != nil {
			t.Fatalf("push %s: %v", repo, err)
		}
	}
	return s, host
}

func head(host, repo string, auth authn.Authenticator) error {
	ref, _ := name.ParseReference(host + "/" + repo + ":1")
	_, err := remote.Head(ref, remote.WithAuth(auth), remote.WithRetryBackoff(remote.Backoff{Steps: 1}), remote.WithRetryStatusCodes())
	return err
}

func status(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	if err == nil {
		return 200
	}
	return -1
}

func TestGHCRAuthBehaviour(t *testing.T) {
	s, host := start(t)
	bad := &authn.Basic{Username: "someone", Password: "expired"}
	tests := []struct {
		name   string
		repo   string
		auth   authn.Authenticator
		reject int
		want   int
	}{
		{"anonymous public", "acme/public", authn.Anonymous, 403, 200},
		{"anonymous private", "acme/private", authn.Anonymous, 403, 401},
		{"reader private", "acme/private", &authn.Basic{Username: "reader", Password: "readerpw"}, 403, 200},
		{"reader cannot read what it was not granted", "acme/other", &authn.Basic{Username: "reader", Password: "readerpw"}, 403, 401},
		{"rejected credentials on a public repo: 403 like GHCR", "acme/public", bad, 403, 403},
		{"rejected credentials, 401 variant", "acme/public", bad, 401, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetReject(tt.reject, "")
			if got := status(head(host, tt.repo, tt.auth)); got != tt.want {
				t.Errorf("status %d, want %d", got, tt.want)
			}
		})
	}
	s.SetReject(http.StatusForbidden, "")
}

func TestFaultsAndLog(t *testing.T) {
	s, host := start(t)
	s.ResetLog()
	s.FailNext(1, 503, "2", "/manifests/")
	if got := status(head(host, "acme/public", authn.Anonymous)); got != 503 {
		t.Fatalf("fault not injected: %d", got)
	}
	if got := status(head(host, "acme/public", authn.Anonymous)); got != 200 {
		t.Fatalf("fault not consumed: %d", got)
	}
	_ = head(host, "acme/public", &authn.Basic{Username: "x", Password: "canary-secret"})
	found := false
	for _, r := range s.Requests() {
		found = found || (r.BasicPassword == "canary-secret" && r.Path == "/token" && r.Status == 403)
	}
	if !found {
		t.Errorf("log lacks the rejected Basic request: %+v", s.Requests())
	}
}

func TestRejectMessageOverride(t *testing.T) {
	s, host := start(t)
	s.SetReject(403, "line1\n::warning::x")
	err := head(host, "acme/public", &authn.Basic{Username: "x", Password: "y"})
	if !strings.Contains(err.Error(), "::warning::x") {
		t.Errorf("message not passed through: %v", err)
	}
	_ = context.Background()
}

func TestLibtrustKeyIDShape(t *testing.T) {
	id := libtrustKeyID([]byte("x"))
	if len(id) != 59 || strings.Count(id, ":") != 11 {
		t.Errorf("key id %q is not 12 groups of 4", id)
	}
}
