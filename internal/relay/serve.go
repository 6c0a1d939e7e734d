package relay

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Handler serves the distribution API's read side to one host: GET and
// HEAD of /v2/, of manifests by digest and of blobs, for the repositories
// and digests allowed, with no authentication (the listener is the host's
// loopback, reached only through its SSH connection). Everything else is
// refused. Bytes sent are counted for host.
func (s *Server) Handler(host string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "the relay is read-only")
			return
		}
		if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte("{}"))
			return
		}
		path, kind, ref, ok := parsePath(r.URL.Path)
		if !ok {
			writeError(w, http.StatusNotFound, "NAME_UNKNOWN", "the relay serves only the images of this step")
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		defer func() { s.count(host, path, cw.n) }()
		switch kind {
		case "manifests":
			s.serveManifest(cw, r, path, ref)
		default:
			s.serveBlob(cw, r, host, path, ref)
		}
	})
}

// Serve answers host's runtime on l (an SSH remote forward on the host's
// loopback) until l is closed.
func (s *Server) Serve(l net.Listener, host string) error {
	srv := &http.Server{Handler: s.Handler(host), ReadHeaderTimeout: time.Minute}
	err := srv.Serve(l)
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// parsePath splits /v2/<path>/(manifests|blobs)/<ref>.
func parsePath(p string) (path, kind, ref string, ok bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", "", false
	}
	for _, k := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(rest, k); i > 0 {
			path, ref = rest[:i], rest[i+len(k):]
			if ref == "" || strings.Contains(ref, "/") {
				return "", "", "", false
			}
			return path, strings.Trim(k, "/"), ref, true
		}
	}
	return "", "", "", false
}

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, path, ref string) {
	if !strings.HasPrefix(ref, "sha256:") {
		// A tag could be moved upstream between hosts; the relay serves
		// the probed digest only.
		writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "the relay serves manifests by digest only")
		return
	}
	m, err := s.manifestOf(r.Context(), path, ref)
	if errors.Is(err, errNotRelayed) {
		writeError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "not relayed in this step")
		return
	}
	if err != nil {
		s.keepErr(path, err)
		writeError(w, http.StatusBadGateway, "UNAVAILABLE", "the relay could not fetch the manifest upstream")
		return
	}
	w.Header().Set("Content-Type", string(m.mediaType))
	w.Header().Set("Docker-Content-Digest", ref)
	w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(m.body)
}

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, host, path, dgst string) {
	rd, err := s.openBlob(r.Context(), path, dgst)
	if errors.Is(err, errNotRelayed) {
		writeError(w, http.StatusNotFound, "BLOB_UNKNOWN", "not relayed in this step")
		return
	}
	var ce *CacheError
	if errors.As(err, &ce) && ce.Size > ce.Bound {
		// Never servable in this step: a 4xx with a registry error code is
		// what dockerd does not retry (it retries a 502 five times, about
		// 75 s, before the host's result can say why).
		writeError(w, http.StatusForbidden, "DENIED", "the blob is larger than the relay's cache bound (relay-cache-max)")
		return
	}
	if err != nil {
		writeError(w, http.StatusBadGateway, "UNAVAILABLE", "the relay could not fetch the blob upstream")
		return
	}
	defer rd.Close()
	if r.Method == http.MethodGet {
		s.mu.Lock()
		s.asked[asked{host, path, dgst}] = true
		s.mu.Unlock()
	}
	rc := http.NewResponseController(w)
	rd.flush = func() { _ = rc.Flush() }
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", dgst)
	// ServeContent answers Range requests, with which runtimes resume an
	// interrupted layer; the size comes from the manifest, so the headers
	// go out before the blob is fetched whole.
	http.ServeContent(w, r, "", time.Time{}, rd)
	if rd.err != nil {
		if !errors.Is(rd.err, errDamaged) {
			s.keepErr(path, rd.err)
		}
		// The fetch or the store's copy failed under the response: cut it
		// (the connection closes mid-body), so the runtime cannot take what
		// it got for the whole blob. A runtime retries a cut blob; a
		// damaged copy has left the cache by then, so the retry fetches it.
		panic(http.ErrAbortHandler)
	}
}

// keepErr keeps an upstream failure met while serving path for Err.
func (s *Server) keepErr(path string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rp, ok := s.repos[path]; ok {
		rp.err = err
	}
}

func (s *Server) count(host, path string, n int64) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	s.served[[2]string{host, path}] += n
	s.mu.Unlock()
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
}
