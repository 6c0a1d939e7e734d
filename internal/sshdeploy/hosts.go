package sshdeploy

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Defaults for hosts that name no user or port.
const (
	defaultUser = "root"
	defaultPort = 22
)

// Host is one SSH destination.
type Host struct {
	User string
	// Name is a host name or an IP address, IPv6 without brackets.
	Name string
	Port int
}

// Addr is host:port, as dialled (IPv6 in brackets).
func (h Host) Addr() string { return net.JoinHostPort(h.Name, strconv.Itoa(h.Port)) }

// String is user@host:port, the form hosts are reported in.
func (h Host) String() string { return h.User + "@" + h.Addr() }

// parseHosts reads the ssh-host input: one or more [user@]host[:port],
// separated by newlines or commas, IPv6 addresses in brackets when a port
// follows ([2001:db8::1]:2222). An ssh:// prefix is accepted. Hosts naming
// no user or port get user and port.
func parseHosts(s, user string, port int) ([]Host, error) {
	return parseHostList(settingHosts, s, user, port, false)
}

// parseProxyJump reads the ssh-proxy-jump input: a bastion
// [user@]host[:port], or a comma-separated chain of them as OpenSSH's
// ProxyJump takes, the first dialled first. Empty means no bastion.
func parseProxyJump(s, user string, port int) ([]Host, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	return parseHostList(settingProxyJump, s, user, port, true)
}

func parseHostList(input, s, user string, port int, chain bool) ([]Host, error) {
	if user == "" {
		user = defaultUser
	}
	if port == 0 {
		port = defaultPort
	}
	var hosts []Host
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.ReplaceAll(s, "\r", ""), "\n") {
		for _, entry := range strings.Split(line, ",") {
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			h, problem := parseHost(entry, user, port)
			if problem != "" {
				return nil, failure.Bad(input, fmt.Sprintf("%q: %s", entry, problem), "write [user@]host[:port], IPv6 as [addr]:port, entries separated by newlines or commas")
			}
			if !chain {
				if seen[h.String()] {
					return nil, failure.Bad(input, fmt.Sprintf("%s is listed twice", h), "")
				}
				seen[h.String()] = true
			}
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return nil, failure.Bad(input, "names no host", "write [user@]host[:port]")
	}
	return hosts, nil
}

// parseHost reads one [user@]host[:port]; problem is empty when it is valid.
func parseHost(s, defUser string, defPort int) (Host, string) {
	h := Host{User: defUser, Port: defPort}
	s = strings.TrimPrefix(s, "ssh://")
	if strings.ContainsAny(s, " \t/?#") {
		return h, "contains a space, slash or other character no host has"
	}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		h.User = s[:i]
		s = s[i+1:]
		if h.User == "" {
			return h, "the user before @ is empty"
		}
		if strings.ContainsAny(h.User, "@:[]") || strings.HasPrefix(h.User, "-") {
			return h, "the user name is not valid"
		}
	}
	portStr := ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return h, "the [ of an IPv6 address is not closed"
		}
		h.Name = s[1:end]
		rest := s[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return h, "only :port may follow ]"
			}
			portStr = rest[1:]
		}
	case strings.Count(s, ":") > 1:
		// A bare IPv6 address: it cannot carry a port without brackets.
		if net.ParseIP(s) == nil {
			return h, "is neither host:port nor an IPv6 address (write IPv6 with a port as [addr]:port)"
		}
		h.Name = s
	default:
		h.Name = s
		if i := strings.Index(s, ":"); i >= 0 {
			h.Name, portStr = s[:i], s[i+1:]
		}
	}
	if h.Name == "" {
		return h, "the host is empty"
	}
	if strings.HasPrefix(h.Name, "-") {
		return h, "a host cannot start with -"
	}
	if ip := net.ParseIP(h.Name); ip == nil {
		for _, r := range h.Name {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
				return h, fmt.Sprintf("%q is not a valid host name", h.Name)
			}
		}
	} else if strings.Contains(h.Name, "%") {
		return h, "zoned IPv6 addresses are not supported"
	}
	if portStr != "" || strings.HasSuffix(s, ":") {
		p, err := parsePort(portStr)
		if err != nil {
			return h, err.Error()
		}
		h.Port = p
	}
	return h, ""
}

// parsePort reads a TCP port, 1 to 65535.
func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return p, nil
}
