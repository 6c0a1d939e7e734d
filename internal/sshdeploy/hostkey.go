package sshdeploy

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeyPolicy decides which host keys are accepted. The zero value and a
// nil policy accept nothing; build one with parseHostKeyPolicy.
//
// A key is accepted when it matches an ssh-known-hosts entry for the host
// dialled or any of the ssh-fingerprint values; a key marked @revoked is
// refused even then. Verification happens inside the key exchange, so a
// refused host never sees an authentication attempt or a channel.
type hostKeyPolicy struct {
	insecure bool
	// knownHosts checks a key for host:port; nil when no known hosts.
	knownHosts ssh.HostKeyCallback
	// authorities is set when @cert-authority lines exist: then a host
	// may be known through a certificate, which cannot be checked before
	// connecting.
	authorities bool
	// fingerprints holds the decoded SHA-256 hashes.
	fingerprints map[string]bool
	// fingerprintText keeps them as given, normalised, for messages.
	fingerprintText []string
}

// parseHostKeyPolicy builds the policy from the ssh-known-hosts,
// ssh-fingerprint and ssh-insecure-ignore-host-key inputs. With neither known
// hosts nor fingerprints nor insecure, the policy is valid but CheckHosts
// fails, naming the ssh-keyscan command that gives the missing value.
func parseHostKeyPolicy(knownHostsText, fingerprints string, insecure bool) (*hostKeyPolicy, error) {
	p := &hostKeyPolicy{insecure: insecure}
	if insecure {
		if strings.TrimSpace(knownHostsText) != "" || strings.TrimSpace(fingerprints) != "" {
			return nil, failure.Bad(settingInsecureIgnoreHostKey, "is true while {KnownHosts} or {Fingerprints} is set", "drop {InsecureIgnoreHostKey} to verify host keys with the values given")
		}
		return p, nil
	}
	if strings.TrimSpace(knownHostsText) != "" {
		cb, authorities, err := parseKnownHosts(knownHostsText)
		if err != nil {
			return nil, err
		}
		p.knownHosts, p.authorities = cb, authorities
	}
	if strings.TrimSpace(fingerprints) != "" {
		text, err := parseFingerprints(fingerprints)
		if err != nil {
			return nil, err
		}
		p.fingerprints, p.fingerprintText = map[string]bool{}, text
		for _, fp := range text {
			p.fingerprints[strings.TrimPrefix(fp, "SHA256:")] = true
		}
	}
	return p, nil
}

// insecureIgnoreHostKey is the explicit opt-out: any host key is accepted
// (the one presented is kept in sshConn.hostKey), and action warns.
func insecureIgnoreHostKey() *hostKeyPolicy { return &hostKeyPolicy{insecure: true} }

// Insecure tells whether host keys go unchecked.
func (p *hostKeyPolicy) Insecure() bool { return p != nil && p.insecure }

func (p *hostKeyPolicy) empty() bool {
	return p == nil || (!p.insecure && p.knownHosts == nil && len(p.fingerprints) == 0)
}

// CheckHosts fails, before anything is dialled, when the policy cannot
// accept any key for some host: no known hosts and no fingerprints at all,
// or known hosts (and no fingerprints) without an entry for a host. The
// error names the ssh-keyscan commands that produce the missing lines.
// proxyJump are the bastions hosts are reached through; they are checked
// too, and the hint for a host behind a bastion runs ssh-keyscan there.
func (p *hostKeyPolicy) CheckHosts(hosts, proxyJump []Host) error {
	if p.empty() {
		return failure.Bad(
			settingKnownHosts,
			"host keys are verified, and neither {KnownHosts} nor {Fingerprints} is set",
			"put the output of "+keyscanPlan(hosts, proxyJump, nil)+
				" (run from a network you trust) in {KnownHosts}, or the hosts' SHA256:... key fingerprints in {Fingerprints};"+
				" {InsecureIgnoreHostKey}: true skips the check")
	}
	if p.insecure || len(p.fingerprints) > 0 || p.authorities {
		return nil
	}
	unknown := map[Host]bool{}
	var names []string
	for _, h := range slices.Concat(proxyJump, hosts) {
		if len(p.knownKeys(h)) == 0 {
			unknown[h] = true
			names = append(names, knownHostsName(h))
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	return failure.Bad(
		settingKnownHosts,
		"has no entry for "+strings.Join(names, ", "),
		"add the output of "+keyscanPlan(hosts, proxyJump, unknown)+
			" (run from a network you trust); hosts on a port other than 22 are written [host]:port")
}

// knownHostsName is how a host appears in known_hosts.
func knownHostsName(h Host) string {
	if h.Port == 22 {
		return h.Name
	}
	return "[" + h.Name + "]:" + strconv.Itoa(h.Port)
}

// keyscanCommand is the ssh-keyscan command that prints known_hosts lines
// for names on port.
func keyscanCommand(port int, names ...string) string {
	return "ssh-keyscan -p " + strconv.Itoa(port) + " " + strings.Join(names, " ")
}

// keyscanPlan names the ssh-keyscan commands that give known_hosts lines
// for the hosts (only those in only, when set): one command per port, run
// from the runner for the first bastion and for hosts without bastions,
// and on the previous bastion otherwise.
func keyscanPlan(hosts, proxyJump []Host, only map[Host]bool) string {
	var cmds []string
	add := func(group []Host, via *Host) {
		byPort := map[int][]string{}
		for _, h := range group {
			if only == nil || only[h] {
				byPort[h.Port] = append(byPort[h.Port], h.Name)
			}
		}
		ports := make([]int, 0, len(byPort))
		for p := range byPort {
			ports = append(ports, p)
		}
		sort.Ints(ports)
		for _, port := range ports {
			cmd := keyscanCommand(port, byPort[port]...)
			if via != nil {
				cmd = "ssh -p " + strconv.Itoa(via.Port) + " " + via.User + "@" + via.Name + " " + cmd
			}
			cmds = append(cmds, "`"+cmd+"`")
		}
	}
	var via *Host
	for i := range proxyJump {
		add(proxyJump[i:i+1], via)
		via = &proxyJump[i]
	}
	add(hosts, via)
	return strings.Join(cmds, " and ")
}

// dummyKey never matches a known host: checking it yields the host's known
// keys in a *knownhosts.KeyError. Made on first use, not at start-up, where
// every run would pay for the key generation.
var dummyKey = sync.OnceValue(func() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return k
})

// knownKeys lists the known_hosts keys (not authorities) for h.
func (p *hostKeyPolicy) knownKeys(h Host) []ssh.PublicKey {
	if p == nil || p.knownHosts == nil {
		return nil
	}
	err := p.knownHosts(h.Addr(), &net.TCPAddr{IP: net.IPv4zero, Port: h.Port}, dummyKey())
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	keys := make([]ssh.PublicKey, 0, len(ke.Want))
	for _, w := range ke.Want {
		keys = append(keys, w.Key)
	}
	return keys
}

// keyFamilies are host key algorithms grouped by key type, in the order
// OpenSSH's client prefers them. x/crypto's own default order puts RSA
// first, so a host with several keys would present its RSA key while users
// usually pin the Ed25519 one (`ssh-keygen -lf ssh_host_ed25519_key.pub`).
var keyFamilies = [][]string{
	{ssh.KeyAlgoED25519},
	{ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521},
	// ssh-rsa (SHA-1 signatures) last, as x/crypto's defaults keep it, for
	// servers older than OpenSSH 7.2.
	{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA},
}

// familyOf returns the index in keyFamilies of a key type, or -1.
func familyOf(keyType string) int {
	if keyType == ssh.KeyAlgoRSA {
		return 2
	}
	for i, f := range keyFamilies {
		if slices.Contains(f, keyType) {
			return i
		}
	}
	return -1
}

// hostKeyAlgorithms says which host key algorithms to offer for h, skipping
// the families already tried. nil means x/crypto's defaults. retry reports
// whether another attempt with other families makes sense after a refusal:
// only fingerprints, which do not say their key type, need that.
func (p *hostKeyPolicy) hostKeyAlgorithms(h Host, tried map[int]bool) (algos []string, retry bool) {
	if p.authorities {
		// Hosts known through certificates present certificate algorithms.
		return nil, false
	}
	var use []bool
	switch {
	case p.insecure || len(p.fingerprints) > 0:
		// Any type may match (a fingerprint does not say its type): offer
		// all, in preference order.
		use = []bool{true, true, true}
	default:
		use = make([]bool, len(keyFamilies))
		for _, k := range p.knownKeys(h) {
			if f := familyOf(k.Type()); f >= 0 {
				use[f] = true
			}
		}
	}
	for f, ok := range use {
		if ok && !tried[f] {
			algos = append(algos, keyFamilies[f]...)
		}
	}
	if len(algos) == 0 && len(tried) == 0 {
		// Known keys of types outside keyFamilies: leave it to x/crypto.
		return nil, false
	}
	return algos, len(p.fingerprints) > 0
}

// verifier checks one handshake's host key and remembers what it saw.
type verifier struct {
	policy    *hostKeyPolicy
	host      Host
	called    bool
	presented ssh.PublicKey
	refused   *hostKeyError
}

func (v *verifier) callback(hostname string, remote net.Addr, key ssh.PublicKey) error {
	v.called = true
	v.presented = key
	p := v.policy
	if p.insecure {
		return nil
	}
	refuse := &hostKeyError{Host: v.host.Addr(), Name: v.host.Name, Port: v.host.Port, Presented: []string{describeKey(key)}}
	if p.knownHosts != nil {
		err := p.knownHosts(hostname, remote, key)
		if err == nil {
			return nil
		}
		var revoked *knownhosts.RevokedError
		if errors.As(err, &revoked) {
			refuse.Revoked = true
			v.refused = refuse
			return refuse
		}
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			for _, w := range ke.Want {
				refuse.Expected = append(refuse.Expected, describeKey(w.Key))
			}
		}
	}
	if len(p.fingerprints) > 0 {
		if p.fingerprints[rawFingerprint(key)] {
			return nil
		}
		if cert, ok := key.(*ssh.Certificate); ok && p.fingerprints[rawFingerprint(cert.Key)] {
			return nil
		}
		refuse.Expected = append(refuse.Expected, p.fingerprintText...)
	}
	v.refused = refuse
	return refuse
}

func describeKey(k ssh.PublicKey) string { return k.Type() + " " + ssh.FingerprintSHA256(k) }

func rawFingerprint(k ssh.PublicKey) string {
	return strings.TrimPrefix(ssh.FingerprintSHA256(k), "SHA256:")
}

// parseFingerprints reads the ssh-fingerprint input: one or more
// SHA256:<base64> host key fingerprints, as `ssh-keygen -l` prints them,
// separated by newlines, commas or spaces. Whole `ssh-keygen -l` lines
// ("256 SHA256:... host (ED25519)") are accepted: the rest of the line is
// ignored. MD5 fingerprints are refused. It returns them normalised
// (SHA256:<unpadded base64>), without duplicates.
func parseFingerprints(s string) ([]string, error) {
	set := map[string]bool{}
	var text []string
	for n, line := range strings.Split(strings.ReplaceAll(s, "\r", ""), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		found := false
		for _, tok := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
			upper := strings.ToUpper(tok)
			switch {
			case strings.HasPrefix(upper, "SHA256:"):
				b64 := strings.TrimRight(tok[len("SHA256:"):], "=")
				raw, err := base64.RawStdEncoding.DecodeString(b64)
				if err != nil || len(raw) != 32 {
					return nil, failure.Bad(settingFingerprints, fmt.Sprintf("line %d: %q is not a SHA256 fingerprint (43 base64 characters after SHA256:)", n+1, tok), "copy it from `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host")
				}
				b64 = base64.RawStdEncoding.EncodeToString(raw)
				if !set[b64] {
					set[b64] = true
					text = append(text, "SHA256:"+b64)
				}
				found = true
			case strings.HasPrefix(upper, "MD5:") || isHexColons(tok):
				return nil, failure.Bad(settingFingerprints, fmt.Sprintf("line %d: %q is an MD5 fingerprint", n+1, tok), "use the SHA256 form: `ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub` on the host")
			}
		}
		if !found {
			return nil, failure.Bad(settingFingerprints, fmt.Sprintf("line %d holds no SHA256:... fingerprint", n+1), "copy it from `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host")
		}
	}
	if len(set) == 0 {
		return nil, failure.Bad(settingFingerprints, "holds no fingerprint", "")
	}
	return text, nil
}

func isHexColons(s string) bool {
	parts := strings.Split(s, ":")
	if len(parts) != 16 {
		return false
	}
	for _, p := range parts {
		if len(p) != 2 || strings.Trim(p, "0123456789abcdefABCDEF") != "" {
			return false
		}
	}
	return true
}

// keyTypes are the public key algorithm names a known_hosts line may start
// with when the host names were left out.
var keyTypes = []string{"ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"}

// parseKnownHosts reads known_hosts text as ssh-keyscan prints it:
// "host keytype key", hashed |1|salt|hash hosts, [host]:port, patterns,
// @cert-authority and @revoked markers, and comments. Lines are checked one
// by one so that errors name the line; the whole text then goes through
// x/crypto's knownhosts, which reads files only. known_hosts holds public
// keys, but the temporary file is private to the process and removed at
// once all the same.
func parseKnownHosts(text string) (ssh.HostKeyCallback, bool, error) {
	text = strings.ReplaceAll(text, "\r\n", "\n")
	authorities := false
	entries := 0
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		bad := func(problem, fix string) error {
			return failure.Bad(settingKnownHosts, fmt.Sprintf("line %d: %s", n+1, problem), fix)
		}
		fields := strings.Fields(line)
		if slices.Contains(keyTypes, fields[0]) {
			return nil, false, bad("is a bare public key without host names", "write `host keytype key`, as ssh-keyscan prints it, or give the key's SHA256 fingerprint in {Fingerprints}")
		}
		if fields[0] == "@cert-authority" {
			authorities = true
		}
		if _, _, _, _, _, err := ssh.ParseKnownHosts([]byte(line)); err != nil {
			return nil, false, bad("cannot be parsed: "+err.Error(), "paste lines as ssh-keyscan prints them: `host keytype base64-key`")
		}
		entries++
	}
	if entries == 0 {
		return nil, false, failure.Bad(settingKnownHosts, "holds only comments or blank lines", "")
	}

	f, err := os.CreateTemp("", "ghcr-pull-known-hosts-*")
	if err != nil {
		return nil, false, fmt.Errorf("writing {KnownHosts} to a temporary file: %w", err)
	}
	name := f.Name()
	defer os.Remove(name)
	if _, err := f.WriteString(text + "\n"); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("writing {KnownHosts} to a temporary file: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, false, err
	}
	// knownhosts.New reads the file now and keeps everything in memory.
	cb, err := knownhosts.New(name)
	if err != nil {
		msg := strings.TrimPrefix(strings.ReplaceAll(err.Error(), name+":", "line "), "knownhosts: ")
		return nil, false, failure.Bad(settingKnownHosts, msg, "paste lines as ssh-keyscan prints them: `host keytype base64-key`")
	}
	return cb, authorities, nil
}
