package mirror

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Set
		wantErr bool
	}{
		{"empty", " \n", Set{}, false},
		{"docker hub aliases are one registry, order kept", "docker.io=mirror.gcr.io\nregistry-1.docker.io=https://harbor.example.com/dockerhub-proxy/\n# comment\nindex.docker.io=mirror.gcr.io",
			Set{"index.docker.io": {{Host: "mirror.gcr.io"}, {Host: "harbor.example.com", Prefix: "dockerhub-proxy"}}}, false},
		{"plain http by choice, ports, commas", "ghcr.io=http://127.0.0.1:5001, localhost:5000=cache.internal:5443",
			Set{"ghcr.io": {{Host: "127.0.0.1:5001", PlainHTTP: true}}, "localhost:5000": {{Host: "cache.internal:5443"}}}, false},
		{"no equals", "mirror.gcr.io", nil, true},
		{"empty mirror", "docker.io=", nil, true},
		{"registry with a path", "docker.io/library=mirror.gcr.io", nil, true},
		{"other scheme", "docker.io=ftp://mirror", nil, true},
		{"mirror with a digest", "docker.io=mirror.gcr.io@sha256:abc", nil, true},
		{"bad prefix", "docker.io=mirror.gcr.io/UPPER", nil, true},
		{"its own mirror", "docker.io=registry-1.docker.io", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr {
				var bad *failure.BadInput
				if !errors.As(err, &bad) || bad.Input != "Mirrors" || bad.Fix == "" {
					t.Fatalf("err = %v, want a bad-input error naming mirrors", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFromDaemonAndRef(t *testing.T) {
	ms := FromDaemon([]string{"https://mirror.gcr.io/", "http://10.0.0.5:5000/", "not a url"})
	want := []Mirror{{Host: "mirror.gcr.io", FromDaemon: true}, {Host: "10.0.0.5:5000", PlainHTTP: true, FromDaemon: true}}
	if !reflect.DeepEqual(ms, want) {
		t.Fatalf("FromDaemon = %+v", ms)
	}
	repo, _ := name.NewRepository("alpine")
	d := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		m    Mirror
		want string
	}{
		{Mirror{Host: "mirror.gcr.io"}, "mirror.gcr.io/library/alpine@" + d},
		{Mirror{Host: "harbor.example.com", Prefix: "hub"}, "harbor.example.com/hub/library/alpine@" + d},
	}
	for _, tt := range tests {
		got, err := tt.m.Ref(repo, d)
		if err != nil || got.String() != tt.want {
			t.Errorf("%v.Ref = %v, %v; want %s", tt.m, got, err, tt.want)
		}
	}
	s := Set{}
	s.Add("docker.io", Mirror{Host: "a"})
	s.Add(DockerHub, Mirror{Host: "a", FromDaemon: true}, Mirror{Host: "b", FromDaemon: true})
	if got := s.For("registry-1.docker.io"); len(got) != 2 || got[0].FromDaemon || got[1].Host != "b" {
		t.Errorf("For = %+v: the input's mirror keeps its place, the daemon's are added after", got)
	}
}
