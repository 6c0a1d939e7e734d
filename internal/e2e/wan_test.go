package e2e

import (
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// The benchmarks' model of a wide-area network. This machine's kernel has
// no sch_netem, so a link is a proxy in the test process (proxy) that holds
// what it carries for the link's one-way delay and, when the link has a
// bandwidth, paces it through one queue per direction shared by every
// connection across the link, as a router's would be. Connection set-up
// costs its round trip. What is not modelled: loss, and TCP's slow start
// over the long link (each side's TCP talks to the proxy on this machine).

// wanLink is one link: its one-way delay and, optionally, the bandwidth
// of what the client sends (up) and receives (down).
type wanLink struct {
	oneWay   time.Duration
	up, down *pacer // nil: the machine's speed
}

// newWANLink is a link with round-trip time rtt and bytesPerSec each way
// (0: unlimited).
func newWANLink(rtt time.Duration, bytesPerSec float64) *wanLink {
	l := &wanLink{oneWay: rtt / 2}
	if bytesPerSec > 0 {
		l.up, l.down = &pacer{bytesPerSec: bytesPerSec}, &pacer{bytesPerSec: bytesPerSec}
	}
	return l
}

// pacer is one direction of a link of fixed bandwidth.
type pacer struct {
	mu          sync.Mutex
	bytesPerSec float64
	free        time.Time // when the bytes queued so far have left
}

// leaves is when n bytes handed to the link now have left it: after
// those queued before them, at the link's rate.
func (p *pacer) leaves(n int) time.Time {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.free.Before(now) {
		p.free = now
	}
	p.free = p.free.Add(time.Duration(float64(n) / p.bytesPerSec * float64(time.Second)))
	return p.free
}

// proxy carries each connection l accepts to target, until l is closed,
// across link (nil: as fast as the machine goes).
func proxy(l net.Listener, target string, link *wanLink) {
	proxyBy(l, target, func(net.Addr) *wanLink { return link })
}

// proxyBy is proxy with the link chosen by the client's address: a
// machine that reaches the same address over a link of its own.
func proxyBy(l net.Listener, target string, linkFrom func(client net.Addr) *wanLink) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		link := linkFrom(c.RemoteAddr())
		go func() {
			defer c.Close()
			if link != nil {
				// The connection's handshake across the link: the
				// client's first bytes reach target one and a half
				// round trips after it began to connect, and so do
				// the server's first bytes the client.
				time.Sleep(2 * link.oneWay)
			}
			u, err := net.DialTimeout("tcp", target, 10*time.Second)
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{})
			go func() {
				link.copy(u.(*net.TCPConn), c.(*net.TCPConn), true)
				close(done)
			}()
			link.copy(c.(*net.TCPConn), u.(*net.TCPConn), false)
			<-done
		}()
	}
}

// copy copies src to dst across the link (up: from the client), then
// closes dst's write side. Every chunk read at t is written once it has
// crossed: at t plus its time on the paced link plus the one-way delay,
// in order, so a round trip costs twice the delay. The link adds no TCP
// behaviour of its own: its sockets acknowledge at once (TCP_QUICKACK), as
// the runner's SSH connection does (sshdeploy's quickAckConn), or sshd's
// small replies, which it sends without TCP_NODELAY, would wait up to
// 40 ms for a delayed ACK here.
func (link *wanLink) copy(dst, src *net.TCPConn, up bool) {
	defer dst.CloseWrite()
	if link == nil {
		io.Copy(dst, src)
		return
	}
	pace := link.down
	if up {
		pace = link.up
	}
	raw, err := src.SyscallConn()
	if err != nil {
		return
	}
	quickAck := func() {
		raw.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1) })
	}
	type chunk struct {
		b  []byte
		at time.Time
	}
	queue := make(chan chunk, 4096)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, 64<<10)
			quickAck()
			n, err := src.Read(buf)
			if n > 0 {
				left := time.Now()
				if pace != nil {
					left = pace.leaves(n)
				}
				queue <- chunk{buf[:n], left.Add(link.oneWay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range queue {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			for range queue {
			}
			return
		}
	}
}
