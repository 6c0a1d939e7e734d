package verify

import (
	"fmt"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
)

// Result says what was verified, for the step's outputs and summary.
type Result struct {
	Method Method
	// Identity is who signed: the certificate's SAN (keyless, attestation)
	// or the public key's fingerprint, "sha256:<hex of its DER>" (key).
	Identity string
	// SignatureDigest is the digest of the manifest that carries the
	// signature: the `.sig` tag's manifest, or the referrer manifest that
	// holds the Sigstore bundle. It pins the evidence as the image digest
	// pins the image.
	SignatureDigest string
}

// NoSignatureError: nothing that could satisfy the policy is attached to the
// digest (no `.sig` tag, no Sigstore bundle referrer, no attestation of the
// required predicate type).
type NoSignatureError struct {
	Image  string
	Method Method
	// Detail says where it looked and what it found instead, if anything.
	Detail string
}

func (e *NoSignatureError) Error() string {
	return fmt.Sprintf("no %s signature found for %s: %s", e.Method, e.Image, e.Detail)
}

// Class names the failure for failure.ClassOf (results' error_class).
func (e *NoSignatureError) Class() string { return failure.Unsigned }

// InvalidSignatureError: a signature is there but does not verify: the
// cryptography fails, the certificate does not chain to the trusted root,
// the transparency-log proof is bad, or it signs another digest.
type InvalidSignatureError struct {
	Image  string
	Reason string
}

func (e *InvalidSignatureError) Error() string {
	return fmt.Sprintf("invalid signature for %s: %s", e.Image, e.Reason)
}

// Class names the failure for failure.ClassOf (results' error_class).
func (e *InvalidSignatureError) Class() string { return failure.InvalidSignature }

// IdentityMismatchError: a signature verifies, but its signer is not the
// one the policy names.
type IdentityMismatchError struct {
	Image string
	// Want is the policy's identity; Got the signer's, when known.
	Want, Got string
	Reason    string
}

func (e *IdentityMismatchError) Error() string {
	s := fmt.Sprintf("signer identity mismatch for %s: want %s", e.Image, e.Want)
	if e.Got != "" {
		s += ", signed by " + e.Got
	}
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	return s
}

// Class names the failure for failure.ClassOf (results' error_class).
func (e *IdentityMismatchError) Class() string { return failure.SignerMismatch }
