//go:build !linux

package sshdeploy

import "net"

// withQuickAck is a Linux optimisation (see quickack_linux.go).
func withQuickAck(c net.Conn) net.Conn { return c }
