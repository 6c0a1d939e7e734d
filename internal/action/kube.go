package action

import (
	"context"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/kube"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// fleetFor is the cluster destination as pull sees it, nil without one.
func fleetFor(cfg Config) pull.Fleet {
	if cfg.Kube == nil {
		return nil
	}
	return kubeFleet{cfg: *cfg.Kube}
}

// kubeFleet adapts internal/kube, which knows no policy, to pull's Fleet:
// pull decides the credentials and the per-node fallback.
type kubeFleet struct{ cfg kube.Config }

func (k kubeFleet) Name() string    { return k.cfg.Server }
func (k kubeFleet) Runtime() string { return "kubernetes" }

func (k kubeFleet) PullAll(ctx context.Context, ref string, creds *registryauth.Credentials, only []string) ([]pull.Member, error) {
	var auth *kube.PullAuth
	if creds != nil {
		r, err := name.ParseReference(ref)
		if err != nil {
			return nil, err
		}
		auth = &kube.PullAuth{Registry: r.Context().RegistryStr(), Username: creds.Username, Password: creds.Password}
	}
	res, err := kube.Prepull(ctx, k.cfg, ref, auth, only)
	members := make([]pull.Member, 0, len(res.Nodes))
	for _, n := range res.Nodes {
		members = append(members, pull.Member{Name: n.Node, Digest: n.Digest, Duration: n.Duration, Err: n.Err})
	}
	return members, err
}
