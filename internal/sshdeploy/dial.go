package sshdeploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"golang.org/x/crypto/ssh"
)

// Defaults for dialConfig.
const (
	defaultTimeout   = 30 * time.Second
	defaultKeepAlive = 15 * time.Second
	// keepAliveCountMax is how many intervals a keepalive may go
	// unanswered before the connection is dropped, as OpenSSH's
	// ServerAliveCountMax.
	keepAliveCountMax = 3
)

// dialConfig says how to reach hosts. Signer and HostKeys are required.
type dialConfig struct {
	// Signer authenticates the client (ssh-key).
	Signer ssh.Signer
	// HostKeys verifies every hop, bastions included.
	HostKeys *hostKeyPolicy
	// ProxyJump lists bastions, dialled in order (ssh-proxy-jump).
	ProxyJump []Host
	// Timeout bounds connecting and the SSH handshake of each hop
	// (ssh-timeout); 0 means defaultTimeout.
	Timeout time.Duration
	// KeepAlive is the interval of keepalive requests on an established
	// connection; 0 means defaultKeepAlive, a negative value none. A
	// connection whose keepalives go unanswered three times is closed.
	KeepAlive time.Duration
	// DialContext opens the TCP connection to the first hop; nil means a
	// net.Dialer. Tests use it to count or redirect connections.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// sshConn is an authenticated SSH connection to one host, possibly through
// bastions. It is safe for concurrent use.
type sshConn struct {
	host    Host
	client  *ssh.Client
	jumps   []*ssh.Client
	hostKey ssh.PublicKey

	stop      chan struct{}
	ended     chan struct{} // closed when the SSH connection ends, whoever ends it
	closeOnce sync.Once
	closeErr  error

	routeMu sync.Mutex
	routes  map[string]routeKind // by socket path, as discovery found them
}

// dialHost connects and authenticates to host, through cfg.ProxyJump when set.
// Host keys are checked before dialling when the policy can tell (see
// hostKeyPolicy.CheckHosts) and verified in each hop's key exchange, before
// the client authenticates. ctx bounds the whole dial; cfg.Timeout bounds
// each hop's connect and handshake. Errors are *failure.BadInput (nothing was
// dialled) or *dialError (which wraps *hostKeyError on a refused key).
func dialHost(ctx context.Context, host Host, cfg dialConfig) (*sshConn, error) {
	if cfg.Signer == nil {
		return nil, failure.Bad(settingKey, "is empty", "{Key} is required with {Hosts}")
	}
	if err := cfg.HostKeys.CheckHosts([]Host{host}, cfg.ProxyJump); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = defaultKeepAlive
	}

	var clients []*ssh.Client
	var prev *ssh.Client
	via := ""
	var hostKey ssh.PublicKey
	for _, hop := range slices.Concat(cfg.ProxyJump, []Host{host}) {
		client, key, err := dialHop(ctx, hop, prev, via, cfg)
		if err != nil {
			for i := len(clients) - 1; i >= 0; i-- {
				clients[i].Close()
			}
			return nil, err
		}
		clients = append(clients, client)
		prev, via, hostKey = client, hop.String(), key
	}
	c := &sshConn{
		host:    host,
		client:  clients[len(clients)-1],
		jumps:   clients[:len(clients)-1],
		hostKey: hostKey,
		stop:    make(chan struct{}),
		ended:   make(chan struct{}),
		routes:  map[string]routeKind{},
	}
	go func() {
		c.client.Wait()
		close(c.ended)
	}()
	if cfg.KeepAlive > 0 {
		for _, cl := range clients {
			go keepAlive(cl, cfg.KeepAlive, c.stop)
		}
	}
	return c, nil
}

// dialHop connects to hop, directly or through prev, and completes the SSH
// handshake. With fingerprints, which do not say their key type, a refused
// key is retried with the other key types the host may hold.
func dialHop(ctx context.Context, hop Host, prev *ssh.Client, via string, cfg dialConfig) (*ssh.Client, ssh.PublicKey, error) {
	tried := map[int]bool{}
	var refused *hostKeyError
	var presented []string
	for {
		algos, retry := cfg.HostKeys.hostKeyAlgorithms(hop, tried)
		client, v, err := handshake(ctx, hop, prev, via, cfg, algos)
		if err == nil {
			return client, v.presented, nil
		}
		if v == nil || (!v.called && refused == nil) || (v.called && v.refused == nil) {
			return nil, nil, err
		}
		if v.refused != nil {
			refused = v.refused
			presented = append(presented, v.refused.Presented...)
			refused.Presented = presented
			if f := familyOf(v.presented.Type()); retry && !v.refused.Revoked && f >= 0 && !tried[f] {
				tried[f] = true
				if more, _ := cfg.HostKeys.hostKeyAlgorithms(hop, tried); len(more) > 0 {
					continue
				}
			}
		}
		// Either the key was refused with nothing left to try, or a retry
		// found no other key type on the host: report the keys seen.
		return nil, nil, &dialError{Host: hop.String(), Via: via, Stage: stageHandshake, Err: refused}
	}
}

// handshake makes one attempt. v is nil when the TCP connection failed.
func handshake(ctx context.Context, hop Host, prev *ssh.Client, via string, cfg dialConfig, algos []string) (*ssh.Client, *verifier, error) {
	hctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	fail := func(stage dialStage, err error) error {
		de := &dialError{Host: hop.String(), Via: via, Stage: stage, Err: err}
		if ctx.Err() == nil && errors.Is(hctx.Err(), context.DeadlineExceeded) {
			de.Err = fmt.Errorf("no answer within %s: %w", cfg.Timeout, os.ErrDeadlineExceeded)
			de.Fix = "check that the host is up and its SSH port open to the runner, or raise {Timeout}"
		} else if ctx.Err() != nil {
			de.Err = ctx.Err()
		}
		return de
	}

	var raw net.Conn
	var err error
	switch {
	case prev != nil:
		raw, err = prev.DialContext(hctx, "tcp", hop.Addr())
	case cfg.DialContext != nil:
		raw, err = cfg.DialContext(hctx, "tcp", hop.Addr())
	default:
		raw, err = (&net.Dialer{}).DialContext(hctx, "tcp", hop.Addr())
		if err == nil {
			raw = withQuickAck(raw)
		}
	}
	if err != nil {
		return nil, nil, fail(stageConnect, err)
	}
	// The handshake has no context of its own: closing the connection is
	// how ctx and the timeout interrupt it (a forwarded channel has no
	// deadlines either).
	stop := context.AfterFunc(hctx, func() { raw.Close() })

	v := &verifier{policy: cfg.HostKeys, host: hop}
	cc := &ssh.ClientConfig{
		User:              hop.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(cfg.Signer)},
		HostKeyCallback:   v.callback,
		HostKeyAlgorithms: algos,
	}
	sc, chans, reqs, err := ssh.NewClientConn(raw, hop.Addr(), cc)
	interrupted := !stop()
	if err == nil && !interrupted {
		return ssh.NewClient(sc, chans, reqs), v, nil
	}
	if err == nil {
		sc.Close()
		err = hctx.Err()
	}
	raw.Close()
	switch {
	case v.refused != nil:
		return nil, v, v.refused
	case v.called:
		de := fail(stageAuth, err).(*dialError)
		if de.Fix == "" {
			de.Fix = fmt.Sprintf("the public half of {Key} must be in the authorized_keys of %q on the host ({User}, or user@ in {Hosts})", hop.User)
		}
		return nil, v, de
	default:
		return nil, v, fail(stageHandshake, err)
	}
}

func keepAlive(c *ssh.Client, every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		reply := make(chan error, 1)
		go func() {
			// Any answer, even a refusal, shows the peer is alive.
			_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		select {
		case err := <-reply:
			if err != nil {
				c.Close()
				return
			}
		case <-time.After(every * keepAliveCountMax):
			c.Close()
			return
		case <-stop:
			return
		}
	}
}

// Close closes the connection and those to the bastions.
func (c *sshConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.stop)
		c.closeErr = c.client.Close()
		for i := len(c.jumps) - 1; i >= 0; i-- {
			c.jumps[i].Close()
		}
	})
	return c.closeErr
}
