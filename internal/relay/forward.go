package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ForwardPrefix starts the line Forward prints once it listens, followed
// by the address.
const ForwardPrefix = "relay-forward: listening on "

// Forward is the `ghcr-pull relay-forward <to>` subcommand: a TCP
// forwarder from a port on 127.0.0.1 to the relay's listener at to. It runs
// in a short-lived container on the host's network beside a containerized
// action, so that the host's dockerd, which pulls plain HTTP only from
// 127.0.0.0/8, reaches the relay on the action's network. It holds no
// secret: its arguments are two addresses. It prints ForwardPrefix and the
// address it listens on, and ends when ctx does or when to stops answering
// (the action is gone: a forwarder never outlives it by more than a few
// seconds).
func Forward(ctx context.Context, to string, out io.Writer) error {
	if _, _, err := net.SplitHostPort(to); err != nil {
		return fmt.Errorf("relay-forward: %q is not host:port: %v", to, err)
	}
	l, err := listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Fprintf(out, "%s%s\n", ForwardPrefix, l.Addr())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		watch(ctx, to)
		cancel()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Go(func() { pipe(ctx, c, to) })
	}
}

// listen opens the forwarder's listener (tests see it closed).
var listen = net.Listen

// watchEvery is how often the forwarder checks that the relay is there.
var watchEvery = 2 * time.Second

// watch returns once to has refused three checks in a row, or ctx ends.
func watch(ctx context.Context, to string) {
	failed := 0
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for failed < 3 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := net.DialTimeout("tcp", to, time.Second)
		if err != nil {
			failed++
			continue
		}
		c.Close()
		failed = 0
	}
}

func pipe(ctx context.Context, c net.Conn, to string) {
	defer c.Close()
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(c, up)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	<-done
}
