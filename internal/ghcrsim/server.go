package ghcrsim

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configure a Server.
type Options struct {
	// Service is the token audience and the registry's service name.
	Service string
	// Issuer is the tokens' iss claim.
	Issuer string
	// Backend is a real registry to proxy /v2/ to; it validates tokens.
	Backend *url.URL
	// Handler is an in-process registry with no auth of its own; the
	// front then checks tokens itself. Exactly one of Backend and Handler.
	Handler http.Handler
}

// Request is one logged request.
type Request struct {
	Time   time.Time
	Method string
	Path   string
	Scope  string
	// BasicUser and BasicPassword are the Basic credentials sent, if any:
	// tests assert that a secret never reached the registry.
	BasicUser     string
	BasicPassword string
	Bearer        bool
	Status        int
	// UserAgent tells the runner's probe (ghcr-pull) from a daemon
	// (docker/..., containerd/...).
	UserAgent string
}

// Server is the front. It is safe for concurrent use.
type Server struct {
	sign    *signer
	backend http.Handler
	verify  bool

	mu            sync.Mutex
	users         map[string]user
	public        map[string]bool
	rejectStatus  int
	rejectMessage string
	oauthStatus   int // answers every OAuth2 POST when set
	faults        []fault
	log           []Request
	extraMatch    string
	extraHeader   http.Header
}

type user struct {
	password string
	repos    []string // "*" is every repository
	push     bool
}

// Fault is a misbehaviour injected into one request whose path contains
// Match. Exactly one of Status, Reset, Truncate and Stall applies, in that
// order of precedence.
type Fault struct {
	Match string
	// Method, when set, is the one method the fault takes (a blob's GET,
	// not a HEAD of it before).
	Method string
	// Status answers with this status (and Retry-After when set) instead
	// of serving the request.
	Status     int
	RetryAfter string
	// Header is added to the injected answer (Docker Hub's quota
	// headers on a 429, say).
	Header http.Header
	// Reset serves the request but closes the connection after half the
	// body: a connection reset in the middle of a blob.
	Reset bool
	// Truncate serves the request with its full Content-Length but only
	// half the body, then ends the response cleanly.
	Truncate bool
	// Stall waits this long before serving (a slow or hung peer).
	Stall time.Duration
	// After, with none of the above, serves the request and then calls
	// After: a change in the registry right after one request (a tag
	// pushed between a probe and a pull).
	After func()
}

type fault = Fault

// New builds a front.
func New(opts Options) (*Server, error) {
	if opts.Service == "" {
		opts.Service = "ghcrsim"
	}
	if opts.Issuer == "" {
		opts.Issuer = "ghcrsim"
	}
	sign, err := newSigner(opts.Issuer, opts.Service)
	if err != nil {
		return nil, err
	}
	s := &Server{sign: sign, users: map[string]user{}, public: map[string]bool{}, rejectStatus: http.StatusForbidden}
	switch {
	case opts.Backend != nil && opts.Handler == nil:
		proxy := httputil.NewSingleHostReverseProxy(opts.Backend)
		proxy.ModifyResponse = rewriteRealm
		s.backend = proxy
	case opts.Handler != nil && opts.Backend == nil:
		s.backend, s.verify = opts.Handler, true
	default:
		return nil, fmt.Errorf("ghcrsim: give exactly one of Backend and Handler")
	}
	return s, nil
}

// RootCertPEM is the certificate for the registry's auth.token.rootcertbundle.
func (s *Server) RootCertPEM() []byte { return s.sign.certPEM }

// Service and Issuer name the registry's auth.token.service and issuer.
func (s *Server) Service() string { return s.sign.service }
func (s *Server) Issuer() string  { return s.sign.issuer }

// AddUser accepts name/password for repos ("*" for all); push adds push.
func (s *Server) AddUser(name, password string, push bool, repos ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[name] = user{password: password, repos: repos, push: push}
}

// SetPublic lets anyone pull repo, as a public GHCR package.
func (s *Server) SetPublic(repo string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.public[repo] = true
}

// SetReject sets how unaccepted Basic credentials are answered: GHCR's 403
// (the default) or 401, with message as the error text ("" for the usual).
func (s *Server) SetReject(status int, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejectStatus, s.rejectMessage = status, message
}

// SetOAuthStatus makes the token endpoint answer every OAuth2 POST (the
// form containerd uses when it has credentials) with status, as token
// servers without the password grant do (Harbor 1.9 answered 403, ACR 400),
// while GET keeps working; 0 serves the POST again.
func (s *Server) SetOAuthStatus(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.oauthStatus = status
}

// SetHeaders adds h to every answer whose path contains match, as Docker
// Hub adds its quota headers to manifest answers; nil stops it.
func (s *Server) SetHeaders(match string, h http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extraMatch, s.extraHeader = match, h.Clone()
}

// FailNext makes the next n requests whose path contains match (e.g.
// "/manifests/" or "/token") answer status, with Retry-After when set.
func (s *Server) FailNext(n, status int, retryAfter, match string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults = append(s.faults, Fault{Status: status, RetryAfter: retryAfter, Match: match})
	}
}

// Inject queues faults, each consumed by the next request it matches.
func (s *Server) Inject(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, faults...)
}

// Pending is how many injected faults no request has consumed yet.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.faults)
}

// Requests returns the log so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

// ResetLog empties the log and pending faults.
func (s *Server) ResetLog() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log, s.faults = nil, nil
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	entry := Request{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Scope: strings.Join(r.URL.Query()["scope"], " "), UserAgent: r.UserAgent()}
	entry.BasicUser, entry.BasicPassword, _ = r.BasicAuth()
	if form, ok := oauthForm(r); ok {
		entry.BasicUser, entry.BasicPassword = form.username, form.password
		entry.Scope = strings.Join(form.scopes, " ")
	}
	entry.Bearer = strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ")
	defer func() {
		entry.Status = rec.status
		s.mu.Lock()
		s.log = append(s.log, entry)
		s.mu.Unlock()
	}()

	s.mu.Lock()
	if s.extraHeader != nil && strings.Contains(r.URL.Path, s.extraMatch) {
		for k, v := range s.extraHeader {
			rec.Header()[k] = v
		}
	}
	s.mu.Unlock()
	var w2 http.ResponseWriter = rec
	var afterServe func()
	if f, ok := s.takeFault(r.Method, r.URL.Path); ok {
		afterServe = f.After
		switch {
		case f.Status != 0:
			for k, v := range f.Header {
				rec.Header()[k] = v
			}
			if f.RetryAfter != "" {
				rec.Header().Set("Retry-After", f.RetryAfter)
			}
			code := "UNAVAILABLE"
			if f.Status == http.StatusTooManyRequests {
				code = "TOOMANYREQUESTS"
			}
			writeError(rec, f.Status, code, http.StatusText(f.Status))
			return
		case f.Reset || f.Truncate:
			w2 = &cutWriter{statusRecorder: rec, reset: f.Reset}
		case f.Stall > 0:
			select {
			case <-time.After(f.Stall):
			case <-r.Context().Done():
				rec.status = 499
				return
			}
		}
	}
	switch {
	case r.URL.Path == "/token":
		s.serveToken(w2, r)
	case strings.HasPrefix(r.URL.Path, "/v2"):
		if s.verify && !s.authorized(w2, r) {
			return
		}
		s.backend.ServeHTTP(w2, r)
	default:
		http.NotFound(w2, r)
	}
	if c, ok := w2.(*cutWriter); ok {
		c.finish()
	}
	if afterServe != nil {
		afterServe()
	}
}

// cutWriter passes half of a body through, then cuts it: by closing the
// connection (reset) or by swallowing the rest (truncate, so the client
// sees fewer bytes than Content-Length promised).
type cutWriter struct {
	*statusRecorder
	reset   bool
	limit   int64
	written int64
	cut     bool
}

func (c *cutWriter) WriteHeader(code int) {
	if n, err := strconv.ParseInt(c.Header().Get("Content-Length"), 10, 64); err == nil {
		c.limit = n / 2
	}
	c.statusRecorder.WriteHeader(code)
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if c.cut {
		return len(p), nil
	}
	if c.limit > 0 && c.written+int64(len(p)) > c.limit {
		p = p[:c.limit-c.written]
		c.cut = true
	}
	n, err := c.statusRecorder.Write(p)
	c.written += int64(n)
	if c.cut {
		c.finish()
		return len(p), nil
	}
	return n, err
}

// finish cuts the connection so the client cannot take the short body
// for a complete one.
func (c *cutWriter) finish() {
	if !c.cut {
		return
	}
	c.Flush()
	if hj, ok := c.ResponseWriter.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			if tcp, ok := conn.(*net.TCPConn); ok && c.reset {
				_ = tcp.SetLinger(0) // RST, not FIN
			}
			_ = conn.Close()
		}
	}
}

func (s *Server) takeFault(method, path string) (fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if strings.Contains(path, f.Match) && (f.Method == "" || f.Method == method) {
			s.faults = slices.Delete(s.faults, i, i+1)
			return f, true
		}
	}
	return fault{}, false
}

var scopeRE = regexp.MustCompile(`^repository:([^:]+):([a-z,*]+)$`)

// serveToken answers like GHCR's token endpoint.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	name, password, hasBasic := r.BasicAuth()
	scopes := r.URL.Query()["scope"]
	if r.Method == http.MethodPost {
		s.mu.Lock()
		oauthStatus := s.oauthStatus
		s.mu.Unlock()
		if oauthStatus != 0 {
			writeError(w, oauthStatus, "DENIED", "password grant not supported")
			return
		}
		form, ok := oauthForm(r)
		if !ok {
			writeError(w, http.StatusBadRequest, "UNSUPPORTED", "unsupported grant_type")
			return
		}
		name, password, hasBasic, scopes = form.username, form.password, true, form.scopes
	}
	s.mu.Lock()
	u, known := s.users[name]
	rejectStatus, rejectMessage := s.rejectStatus, s.rejectMessage
	s.mu.Unlock()
	if hasBasic && (!known || u.password != password) {
		// GHCR: credentials it does not accept are refused outright, even
		// for a public package; it does not fall back to anonymous.
		if rejectStatus == http.StatusUnauthorized {
			writeError(w, rejectStatus, "UNAUTHORIZED", orDefault(rejectMessage, "authentication required"))
		} else {
			writeError(w, rejectStatus, "DENIED", orDefault(rejectMessage, "requested access to the resource is denied"))
		}
		return
	}
	var grants []access
	for _, scope := range scopes {
		m := scopeRE.FindStringSubmatch(scope)
		if m == nil {
			continue
		}
		repo, wanted := m[1], strings.Split(m[2], ",")
		var allowed []string
		for _, action := range wanted {
			if s.allows(hasBasic, u, repo, action) {
				allowed = append(allowed, action)
			}
		}
		// Like distribution's token servers, a scope the caller may not
		// have yields a token without it; the registry then says 401.
		if len(allowed) > 0 {
			grants = append(grants, access{Type: "repository", Name: repo, Actions: allowed})
		}
	}
	subject := name
	if !hasBasic {
		subject = "anonymous"
	}
	token, err := s.sign.issue(subject, grants)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": token, "access_token": token, "expires_in": 300, "issued_at": time.Now().UTC().Format(time.RFC3339),
	})
}

// tokenForm is an OAuth2 password grant at the token endpoint.
type tokenForm struct {
	username, password string
	scopes             []string
}

// oauthForm reads the OAuth2 form of the distribution token spec
// (POST grant_type=password, username, password, space-separated scope),
// which containerd uses whenever it has a secret, falling back to GET only
// when the POST answers 400, 401, 404 or 405. The credentials are checked
// as Basic ones are on GET.
func oauthForm(r *http.Request) (tokenForm, bool) {
	if r.URL.Path != "/token" || r.Method != http.MethodPost {
		return tokenForm{}, false
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" {
		return tokenForm{}, false
	}
	return tokenForm{
		username: r.PostForm.Get("username"),
		password: r.PostForm.Get("password"),
		scopes:   strings.Fields(strings.Join(r.PostForm["scope"], " ")),
	}, true
}

func (s *Server) allows(authenticated bool, u user, repo, action string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if action == "pull" && s.public[repo] {
		return true
	}
	if !authenticated {
		return false
	}
	if action != "pull" && !u.push {
		return false
	}
	return slices.Contains(u.repos, "*") || slices.Contains(u.repos, repo)
}

var repoPathRE = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs|tags)/`)

// authorized guards an in-process registry the way distribution's token
// auth does: 401 with a Bearer challenge unless the token grants the
// repository action the request needs.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	repo, action := "", "pull"
	if m := repoPathRE.FindStringSubmatch(r.URL.Path); m != nil {
		repo = m[1]
	} else if strings.HasSuffix(strings.TrimSuffix(r.URL.Path, "/"), "/blobs/uploads") {
		repo = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(r.URL.Path, "/"), "/v2/"), "/blobs/uploads")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		action = "push"
	}
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if grants, err := s.sign.verify(token); err == nil {
			if repo == "" {
				return true
			}
			for _, g := range grants {
				if g.Name == repo && (slices.Contains(g.Actions, action) || slices.Contains(g.Actions, "*")) {
					return true
				}
			}
		}
	}
	challenge := fmt.Sprintf(`Bearer realm="http://%s/token",service="%s"`, r.Host, s.sign.service)
	if repo != "" {
		challenge += fmt.Sprintf(`,scope="repository:%s:%s"`, repo, action)
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
	return false
}

// rewriteRealm points the registry's challenge at the front as the client
// reached it, so one registry serves loopback clients and daemons in
// network namespaces alike.
func rewriteRealm(resp *http.Response) error {
	h := resp.Header.Get("WWW-Authenticate")
	if h == "" {
		return nil
	}
	re := regexp.MustCompile(`realm="[^"]*"`)
	resp.Header.Set("WWW-Authenticate", re.ReplaceAllString(h, fmt.Sprintf(`realm="http://%s/token"`, resp.Request.Host)))
	return nil
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
