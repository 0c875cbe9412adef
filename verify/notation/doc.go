// Package notation verifies Notary Project signatures (the envelopes the
// notation CLI pushes as application/vnd.cncf.notary.signature artifacts)
// offline, with notation-go's own verifier so that a signature airlock
// accepts is one `notation verify` accepts, and the other way round.
//
// The trust policy and trust stores that the notation CLI reads from
// ~/.config/notation are built in memory instead, from one policy's
// config.NotationTrust: the "ca" trust store holds the PEM certificates of
// trustStore, the "tsa" trust store those of timestampStore, and the
// trusted identities are the configured "x509.subject: ..." strings or "*".
// The verification level is notation's "strict" one, so integrity,
// authenticity (chain and identity), expiry and the certificates'
// validity are all enforced.
//
// Guarantees:
//
//   - Nothing reaches the network. Revocation (OCSP and CRL) needs it, so
//     revocation is not checked: the policy skips it for signing
//     certificates, and timestamping certificates are answered by an
//     offline validator that reports them as not revocable. New logs this
//     once.
//   - A signature counts only for the exact descriptor it signs (digest,
//     size and media type): a valid signature of another image is refused.
//   - When timestampStore is set, every signature must carry an RFC 3161
//     timestamp that chains to it, as notation requires, and a signature
//     made while its certificate was valid stays valid after the
//     certificate expires. Without it, the certificates must be valid at
//     the time of verification.
//
// A Verifier is safe for concurrent use; it reads its trust material once,
// in New.
package notation
