package action

import (
	"context"
	"fmt"
	"net"

	"github.com/ghcr-pull/ghcr-pull/internal/docker"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
	"github.com/ghcr-pull/ghcr-pull/internal/pull"
	"github.com/ghcr-pull/ghcr-pull/internal/relay"
	"github.com/ghcr-pull/ghcr-pull/internal/sshdeploy"
)

// imageCache is cache-path: the relay over a persistent OCI layout, from
// which the runner's daemon pulls through a listener on its loopback.
type imageCache struct {
	srv  *relay.Server
	path string
}

func openCache(cfg Config, probeOpts []ghcr.Option) (*imageCache, error) {
	srv, err := relay.New(relay.Options{Store: cfg.CachePath, MaxBytes: cfg.RelayCacheMax, Transport: ghcr.Transport(probeOpts...), UserAgent: "ghcr-pull"})
	if err != nil {
		return nil, err
	}
	return &imageCache{srv: srv, path: cfg.CachePath}, nil
}

// daemon is the runner's Docker daemon pulling from the cache: the relayed
// Docker host's route (sshdeploy.Local), with the relay listening where
// the daemon reaches it on its own 127.0.0.1.
func (c *imageCache) daemon(ctx context.Context, e *docker.Engine) (pull.Daemon, error) {
	if name, _ := e.Runtime(); name != docker.Docker {
		e.Close()
		return nil, fmt.Errorf("cache-path feeds Docker only so far, and the daemon is %s; drop cache-path", name)
	}
	return sshdeploy.Local(e, c.srv, listenLoopback), nil
}

// listenLoopback is the relay's listener when the daemon shares our
// network namespace (the command line, or a job with the host's network):
// dockerd pulls plain HTTP from 127.0.0.0/8 without configuration.
func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

// close completes the layout with the layers the daemon had already (and
// so did not ask for), names the images pulled in index.json, prunes the
// layout to what the step used and says what the cache saved.
func (c *imageCache) close(ctx context.Context, rep *writer, images []pull.Image, results []pull.Result) {
	refs := map[string]pull.Image{}
	for _, img := range images {
		refs[img.Input] = img
	}
	for _, r := range results {
		if img, ok := refs[r.Image]; ok && r.Err == nil && r.Host == sshdeploy.LocalHost {
			c.srv.Name(img.Ref, r.Digest)
		}
	}
	if err := c.srv.Complete(ctx); err != nil {
		rep.Warning("ghcr-pull: the image cache is incomplete", fmt.Sprintf("cache-path %s: fetching the layers the daemon already had: %v; the next run fetches them", c.path, err))
	}
	st := c.srv.Stats()
	if err := c.srv.Close(); err != nil {
		rep.Warning("ghcr-pull: the image cache could not be tidied", fmt.Sprintf("cache-path %s: %v; the next run verifies every blob it uses", c.path, err))
	}
	fetched := 0
	for _, n := range st.BlobFetches {
		fetched += n
	}
	rep.Info("cache-path: %d blobs from the cache, %d fetched upstream (%s), %d damaged and fetched again", len(st.Reused), fetched, bytesText(st.Bytes), len(st.Discarded))
}
