//go:build !noverify

package verify

import (
	"context"
	"errors"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// maxCandidates bounds how many signatures or bundles are fetched and
// tried per image: a repository can hold any number of referrers, and each
// costs two requests.
const maxCandidates = 16

// maxBlob bounds a signature payload or bundle read into memory.
const maxBlob = 4 << 20

// Verify checks that digest satisfies p, reading signatures from the
// digest's own repository. It is meant to run after the probe resolved the
// digest and before any pull, with the credentials the probe succeeded
// with (auth; nil is anonymous) and its transport in opts. auth is a
// parameter of its own, not hidden in opts, because it decides what a 401
// or 403 means. Registry failures come back classified by failure.FromRegistry (a
// *failure.Rejected when access to the signature is denied, so the
// caller can fall back to anonymous as for the probe); policy failures as
// *NoSignatureError, *InvalidSignatureError or *IdentityMismatchError.
func Verify(ctx context.Context, p *Policy, digest name.Digest, auth authn.Authenticator, opts ...remote.Option) (Result, error) {
	if p == nil {
		return Result{}, errors.New("verify: nil policy")
	}
	if err := p.ready(); err != nil {
		return Result{}, err
	}
	if auth == nil {
		auth = authn.Anonymous
	}
	anonymous := auth == authn.Anonymous
	opts = append(append([]remote.Option{}, opts...), remote.WithContext(ctx), remote.WithAuth(auth))
	puller, err := remote.NewPuller(opts...)
	if err != nil {
		return Result{}, err
	}
	f := fetcher{digest: digest, opts: append(opts, remote.Reuse(puller)), anonymous: anonymous}
	v := verifier{policy: p, digest: digest}

	var (
		tried []outcome
		found int
	)
	// The `.sig` tag first: it is what cosign writes by default and costs
	// two requests; referrers cost two more before the first bundle.
	if p.Method != GitHubAttestation {
		sigs, err := f.legacySignatures()
		if err != nil {
			return Result{}, err
		}
		found += len(sigs)
		for _, c := range sigs {
			o := v.check(c)
			if o.passed() {
				return o.result, nil
			}
			tried = append(tried, o)
		}
	}
	bundles, err := f.bundles()
	if err != nil {
		return Result{}, err
	}
	found += len(bundles)
	for _, c := range bundles {
		o := v.check(c)
		if o.passed() {
			return o.result, nil
		}
		tried = append(tried, o)
	}
	return Result{}, v.failure(tried, found)
}

// outcome is one candidate's verdict.
type outcome struct {
	result Result
	err    error
	// skipped: the candidate verified but is not what the policy asks for
	// (another predicate type): it counts as absent, not as invalid.
	skipped string
}

func (o outcome) passed() bool { return o.err == nil && o.skipped == "" }

// failure picks the error to report when no candidate passed: a signer
// mismatch says more than a broken signature, which says more than none.
func (v verifier) failure(tried []outcome, found int) error {
	img := v.digest.String()
	var invalid *InvalidSignatureError
	var skipped []string
	for _, o := range tried {
		var mm *IdentityMismatchError
		if errors.As(o.err, &mm) {
			return mm
		}
		var inv *InvalidSignatureError
		if errors.As(o.err, &inv) && invalid == nil {
			invalid = inv
		}
		if o.skipped != "" {
			skipped = append(skipped, o.skipped)
		}
	}
	if invalid != nil {
		return invalid
	}
	detail := v.policy.lookedIn()
	if found == 0 {
		detail += ": none attached"
	} else if len(skipped) > 0 {
		detail += ": found only " + strings.Join(dedupe(skipped), ", ")
	}
	return &NoSignatureError{Image: img, Method: v.policy.Method, Detail: detail}
}

func (p *Policy) lookedIn() string {
	switch p.Method {
	case GitHubAttestation:
		return "looked for Sigstore bundle referrers with predicate type " + p.PredicateType
	default:
		return "looked for the cosign .sig tag and Sigstore bundle referrers"
	}
}

// ready rejects a Policy that did not come from ParsePolicy.
func (p *Policy) ready() error {
	switch {
	case p.Method == CosignKey && p.key == nil,
		p.Method != CosignKey && p.trust == nil:
		return errors.New("verify: policy not built by ParsePolicy")
	}
	return nil
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// classify maps a sigstore-go verification error to this package's types.
func (v verifier) classify(err error, got string) error {
	var nm *sgverify.ErrNoMatchingCertificateIdentity
	if errors.As(err, &nm) {
		return &IdentityMismatchError{Image: v.digest.String(), Want: v.policy.want(), Got: got}
	}
	return &InvalidSignatureError{Image: v.digest.String(), Reason: err.Error()}
}
