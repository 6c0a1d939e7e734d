package relay

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestForward(t *testing.T) {
	watchEvery = 20 * time.Millisecond
	t.Cleanup(func() { watchEvery = 2 * time.Second })
	var opened *closeSeen
	listen = func(network, address string) (net.Listener, error) {
		l, err := net.Listen(network, address)
		if err != nil {
			return nil, err
		}
		opened = &closeSeen{Listener: l}
		return opened, nil
	}
	t.Cleanup(func() { listen = net.Listen })

	t.Run("carries a connection to the relay, and ends when the relay is gone", func(t *testing.T) {
		target, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := target.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() { done <- Forward(context.Background(), target.Addr().String(), pw) }()
		line, err := bufio.NewReader(pr).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), ForwardPrefix)
		if !ok || !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Fatalf("first line %q, want %s127.0.0.1:<port>", line, ForwardPrefix)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte("ping\n"))
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || got != "ping\n" {
			t.Errorf("through the forwarder: %q, %v", got, err)
		}
		target.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Forward = %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the forwarder outlived the relay")
		}
		// Its listener is closed. (Dialling its port to see was flaky: 1
		// run in 30 under -race connected after Forward had returned.)
		if !opened.closed.Load() {
			t.Error("the forwarder's listener is still open")
		}
	})

	t.Run("a bad address is refused", func(t *testing.T) {
		if err := Forward(context.Background(), "nowhere", io.Discard); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Forward(nowhere) = %v", err)
		}
	})
}

// closeSeen is a listener that records being closed.
type closeSeen struct {
	net.Listener
	closed atomic.Bool
}

func (l *closeSeen) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}
