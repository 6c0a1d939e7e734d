package failure

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// FromRegistry places an error from go-containerregistry: a registry's
// answer by its status and distribution-spec code, anything else as
// FromNetwork does. anonymous says whether credentials were sent, which
// decides what a 401/403 means. Errors it cannot place are returned
// unchanged.
func FromRegistry(err error, anonymous bool) error {
	if err == nil || classified(err) {
		return err
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return fromTransport(te, anonymous)
	}
	return FromNetwork(err)
}

// FromNetwork places the errors any client meets on the way to a peer:
// the step's deadline, a name that does not resolve, a connection reset,
// refused or cut short. Errors already classified, a cancelled context and
// errors it cannot place are returned unchanged.
func FromNetwork(err error) error {
	if err == nil || classified(err) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Transient{Err: errors.New("timed out"), Response: Response{Where: "registry"}}
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return &NoSuchHost{BadInput: Bad("image", "registry host "+dns.Name+" does not resolve", "check the registry part of the image reference"), Host: dns.Name}
	}
	var netErr net.Error
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return &Transient{Err: err}
	}
	return err
}

// classified reports whether err already carries one of the classes.
func classified(err error) bool {
	var (
		rej *Rejected
		nf  *NotFound
		tr  *Transient
		bad *BadInput
	)
	return errors.As(err, &rej) || errors.As(err, &nf) || errors.As(err, &tr) || errors.As(err, &bad)
}

func fromTransport(te *transport.Error, anonymous bool) error {
	resp := Response{Status: te.StatusCode, Where: "registry"}
	if te.Request != nil && te.Request.URL != nil && !strings.HasPrefix(te.Request.URL.Path, "/v2/") {
		resp.Where = "token endpoint"
	}
	codes := make([]string, 0, len(te.Errors))
	msgs := make([]string, 0, len(te.Errors))
	for _, d := range te.Errors {
		codes = append(codes, string(d.Code))
		msgs = append(msgs, d.Message)
	}
	if len(codes) > 0 {
		resp.Code = codes[0]
		resp.Message = Clip(strings.Join(msgs, "; "))
	} else {
		resp.Message = Clip(http.StatusText(te.StatusCode))
	}
	has := func(want ...transport.ErrorCode) bool {
		for _, c := range codes {
			for _, w := range want {
				if c == string(w) {
					return true
				}
			}
		}
		return false
	}

	switch {
	case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden ||
		has(transport.UnauthorizedErrorCode, transport.DeniedErrorCode):
		return &Rejected{Response: resp, Anonymous: anonymous}
	case te.StatusCode == http.StatusNotFound || has(transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode):
		return &NotFound{Response: resp}
	case te.StatusCode == http.StatusTooManyRequests || te.StatusCode == http.StatusRequestTimeout ||
		te.StatusCode >= 500 || has(transport.TooManyRequestsErrorCode):
		return &Transient{Response: resp}
	case te.StatusCode == http.StatusBadRequest || has(transport.NameInvalidErrorCode, transport.TagInvalidErrorCode, transport.UnsupportedErrorCode):
		return Bad("image", "the registry refused the reference: "+resp.String(), "")
	}
	return te
}

// NoSuchHost: the registry's name does not resolve. It is bad input (a
// typo in the image) unless a mirror serves the registry: a runner
// without a route to the registry (air-gapped, no DNS for it) is what
// mirrors are for, so pull may ask them.
type NoSuchHost struct {
	*BadInput
	Host string
}

func (e *NoSuchHost) Unwrap() error { return e.BadInput }
