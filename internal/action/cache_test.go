package action

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestHostListenerServesOnlyTheGateway: on the job network, the relay
// answers the host (the forwarder, from the network's gateway) and no
// other container.
func TestHostListenerServesOnlyTheGateway(t *testing.T) {
	for _, tc := range []struct {
		name  string
		from  netip.Addr
		serve bool
	}{
		{"the gateway: served", netip.MustParseAddr("127.0.0.1"), true},
		{"another address: closed", netip.MustParseAddr("127.0.0.9"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			removed := 0
			h := &hostListener{Listener: l, from: tc.from, addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, remove: func() error { removed++; return nil }}
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := h.Accept(); err == nil {
					accepted <- c
				}
			}()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case s := <-accepted:
				s.Close()
				if !tc.serve {
					t.Error("a connection from outside the gateway was served")
				}
			case <-time.After(300 * time.Millisecond):
				if tc.serve {
					t.Error("the gateway's connection was not served")
				}
			}
			if err := h.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				t.Fatal(err)
			}
			_ = h.Close()
			if removed != 1 || h.Addr().String() != "127.0.0.1:1" {
				t.Errorf("forwarder removed %d times, Addr %s; want once, the forwarder's address", removed, h.Addr())
			}
		})
	}
}
