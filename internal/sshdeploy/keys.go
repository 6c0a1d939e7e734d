package sshdeploy

import (
	"crypto/x509"
	"errors"
	"strings"

	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"golang.org/x/crypto/ssh"
)

// parsePrivateKey reads the ssh-key input: an OpenSSH ("BEGIN OPENSSH
// PRIVATE KEY") or PEM (PKCS#1, PKCS#8, SEC 1) private key, RSA, ECDSA or
// Ed25519, optionally encrypted with passphrase. Errors name ssh-key or
// ssh-key-passphrase and never quote either.
func parsePrivateKey(key, passphrase string) (ssh.Signer, error) {
	pemText := normalizeKey(key)
	if strings.TrimSpace(pemText) == "" {
		return nil, failure.Bad(settingKey, "is empty", "{Key} is required with {Hosts}: put the private key in a secret and pass it, e.g. {Key}: ${{ secrets.DEPLOY_KEY }}")
	}
	if looksLikePublicKey(pemText) {
		return nil, failure.Bad(settingKey, "holds a public key", "pass the private key (the file without .pub); the public key belongs in the host's authorized_keys")
	}
	if !strings.Contains(pemText, "-----BEGIN ") {
		return nil, failure.Bad(settingKey, "is not a PEM or OpenSSH private key (no -----BEGIN line)", "pass the whole key file, including its BEGIN and END lines")
	}
	signer, err := ssh.ParsePrivateKey([]byte(pemText))
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		// A passphrase for an unencrypted key is harmless; ignore it.
		return signer, nil
	case errors.As(err, &missing):
		if passphrase == "" {
			return nil, failure.Bad(settingKeyPassphrase, "the key in {Key} is encrypted and no passphrase is set", "pass its passphrase in {KeyPassphrase} from a secret")
		}
		signer, err = ssh.ParsePrivateKeyWithPassphrase([]byte(pemText), []byte(passphrase))
		// Legacy PEM encryption (Proc-Type: 4,ENCRYPTED) has no integrity
		// check but its CBC padding: about one wrong passphrase in 256
		// yields valid padding and garbage DER, which then fails as ASN.1.
		// Either way the passphrase is what is wrong.
		if errors.Is(err, x509.IncorrectPasswordError) || (err != nil && strings.Contains(pemText, "Proc-Type: 4,ENCRYPTED")) {
			return nil, failure.Bad(settingKeyPassphrase, "does not decrypt the key in {Key} (wrong passphrase)", "check the secret; `ssh-keygen -y -f <keyfile>` asks for it and prints the public key when it is right")
		}
		if err != nil {
			return nil, failure.Bad(settingKey, "cannot be decrypted: "+err.Error(), "")
		}
		return signer, nil
	case strings.Contains(pemText, "BEGIN ENCRYPTED PRIVATE KEY"):
		return nil, failure.Bad(settingKey, "is an encrypted PKCS#8 key, which is not supported", "convert it with `ssh-keygen -p -f <keyfile>` (OpenSSH format, encrypted or not)")
	default:
		return nil, failure.Bad(settingKey, "cannot be parsed: "+err.Error(), "pass an OpenSSH or PEM private key (RSA, ECDSA or Ed25519), whole, with its line breaks")
	}
}

// normalizeKey undoes what secret stores and YAML do to keys: CRLF line
// ends, surrounding blanks, and line breaks written as a literal \n.
func normalizeKey(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "\n") && strings.Contains(s, `\n`) {
		s = strings.ReplaceAll(s, `\n`, "\n")
	}
	return s + "\n"
}

func looksLikePublicKey(s string) bool {
	if strings.HasPrefix(s, "---- BEGIN SSH2 PUBLIC KEY") {
		return true
	}
	_, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	return err == nil
}
