package kube

import (
	"context"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/ghcr-pull/ghcr-pull/internal/registryauth"
)

// A *Config is the cluster as the pull policy sees it (pull.Fleet): one
// destination of many nodes, reached in one call. The policy decides the
// credentials and the per-node fallback; kube only pre-pulls.

// Name is the cluster as results name it: its API server.
func (c *Config) Name() string { return c.Server }

// Runtime is what results report as the cluster's runtime.
func (c *Config) Runtime() string { return "kubernetes" }

// PullAll pre-pulls ref (repo@digest) onto the selected nodes, or only those
// named in only, with creds' username and password in a pull Secret (none
// when anonymous: a kubelet takes no registry token), and reports each node
// in name order. Its error is Prepull's, for the run as a whole.
func (c *Config) PullAll(ctx context.Context, ref string, creds registryauth.Credentials, only []string, report func(node, digest string, took time.Duration, err error)) error {
	var auth *PullAuth
	if !creds.IsAnonymous() {
		r, err := name.ParseReference(ref)
		if err != nil {
			return err
		}
		auth = &PullAuth{Registry: r.Context().RegistryStr(), Username: creds.Username, Password: creds.Password}
	}
	res, err := Prepull(ctx, *c, ref, auth, only)
	for _, n := range res.Nodes {
		report(n.Node, n.Digest, n.Duration, n.Err)
	}
	return err
}
