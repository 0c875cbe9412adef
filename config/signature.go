package config

import (
	"fmt"
	"regexp"
)

// Signature is a policy's signature check: the image must carry a
// signature that verifies against one of the keys, one of the keyless
// identities, or one of the Notation identities. Any one suffices.
type Signature struct {
	// Keys are PEM public key files (ECDSA, RSA, Ed25519) for cosign
	// key-based signatures.
	Keys []string `yaml:"keys"`
	// Keyless are the identities a keyless (Fulcio certificate) signature
	// may carry.
	Keyless []KeylessIdentity `yaml:"keyless"`
	// TrustedRoot is a Sigstore trusted root (trusted_root.json: Fulcio
	// CAs, Rekor and CT log keys, timestamp authorities), read from disk:
	// verification never goes online. Required with keyless; with keys it
	// lets transparency-log entries and timestamps be checked too.
	TrustedRoot string `yaml:"trustedRoot"`
	// TransparencyLog is how many verified transparency-log (Rekor)
	// entries a signature needs. 0 or absent means 1 for keyless
	// signatures and 0 for key-based ones; a key-based check that requires
	// one also needs trustedRoot.
	TransparencyLog int `yaml:"transparencyLog"`
	// Timestamps is how many verified RFC 3161 timestamps a signature
	// needs, besides the log's integrated time. Default 0.
	Timestamps int `yaml:"timestamps"`
	// CertificateTransparency is how many signed certificate timestamps
	// (SCTs) a keyless certificate needs. 0 or absent means 1.
	CertificateTransparency int `yaml:"certificateTransparency"`
	// Attestations are in-toto predicate types that must also be present,
	// signed by the same keys or identities (e.g.
	// "https://slsa.dev/provenance/v1"). Default: none.
	Attestations []string `yaml:"attestations"`
	// Notation verifies Notary Project signatures. Default: off.
	Notation *NotationTrust `yaml:"notation"`
	// MaxSignatures bounds how many signature artifacts are examined per
	// image. 0 or absent means 16.
	MaxSignatures int `yaml:"maxSignatures"`
	// MaxBytes bounds the bytes of signature artifacts read per image, as
	// a Size. 0 or absent means 4MiB.
	MaxBytes Size `yaml:"maxBytes"`
}

// KeylessIdentity is who a keyless signature must be from: the OIDC
// issuer and the certificate's subject (an email or a workflow URI),
// each exact or as a regular expression. A regular expression matches
// anywhere in the value unless anchored with ^ and $, as cosign's do:
// "@example\.com" also matches "mallory@example.com.evil.test". Anchoring
// is the writer's business; configs/airlock.example.yaml shows how.
type KeylessIdentity struct {
	Issuer        string `yaml:"issuer"`
	IssuerRegExp  string `yaml:"issuerRegExp"`
	Subject       string `yaml:"subject"`
	SubjectRegExp string `yaml:"subjectRegExp"`
}

// NotationTrust is the trust store and identities for Notary Project
// signatures.
type NotationTrust struct {
	// TrustStore are PEM files of the CA certificates signatures must
	// chain to (the "ca" trust store type).
	TrustStore []string `yaml:"trustStore"`
	// TimestampStore are PEM files of the timestamp authorities' roots;
	// default: none (timestamps are not required).
	TimestampStore []string `yaml:"timestampStore"`
	// TrustedIdentities are the signing certificates' subjects allowed,
	// as Notation writes them ("x509.subject: C=US, O=Acme, CN=release"),
	// or "*" for any certificate that chains to the trust store. Required.
	TrustedIdentities []string `yaml:"trustedIdentities"`
}

// Defaults of Signature.
const (
	DefaultMaxSignatures    = 16
	DefaultMaxSignatureSize = Size(4 << 20)
)

func (s *Signature) applyDefaults() {
	setDefault(&s.MaxSignatures, DefaultMaxSignatures)
	setDefault(&s.MaxBytes, DefaultMaxSignatureSize)
}

func (s *Signature) check(p *problems, key string) {
	if len(s.Keys) == 0 && len(s.Keyless) == 0 && s.Notation == nil {
		p.add(key, "names no trust: list keys, keyless identities or notation")
	}
	if len(s.Keyless) > 0 && s.TrustedRoot == "" {
		p.add(key+".trustedRoot", "required with keyless: the Sigstore trusted root (trusted_root.json) that keyless certificates chain to")
	}
	if s.TransparencyLog > 0 && len(s.Keys) > 0 && s.TrustedRoot == "" {
		p.add(key+".trustedRoot", "required when transparencyLog is set: log entries are checked against the keys in the trusted root")
	}
	for i, id := range s.Keyless {
		k := fmt.Sprintf("%s.keyless[%d]", key, i)
		if (id.Issuer == "") == (id.IssuerRegExp == "") {
			p.add(k, "set exactly one of issuer and issuerRegExp")
		}
		if (id.Subject == "") == (id.SubjectRegExp == "") {
			p.add(k, "set exactly one of subject and subjectRegExp")
		}
		for name, re := range map[string]string{"issuerRegExp": id.IssuerRegExp, "subjectRegExp": id.SubjectRegExp} {
			if re == "" {
				continue
			}
			if _, err := regexp.Compile(re); err != nil {
				p.add(k+"."+name, "%q is not a regular expression: %v", re, err)
			}
		}
	}
	for name, n := range map[string]int{"transparencyLog": s.TransparencyLog, "timestamps": s.Timestamps,
		"certificateTransparency": s.CertificateTransparency, "maxSignatures": s.MaxSignatures} {
		if n < 0 || n > 1000 {
			p.add(key+"."+name, "%d is out of range; use 0 to 1000", n)
		}
	}
	if s.MaxBytes < 0 {
		p.add(key+".maxBytes", "must not be negative")
	}
	if s.Notation != nil {
		if len(s.Notation.TrustStore) == 0 {
			p.add(key+".notation.trustStore", "required: the PEM CA certificates Notation signatures chain to")
		}
		if len(s.Notation.TrustedIdentities) == 0 {
			p.add(key+".notation.trustedIdentities", "required: the signing certificates' subjects (\"x509.subject: ...\"), or \"*\"")
		}
	}
}

// files lists the files the check reads, by key, for the host checks.
func (s *Signature) files(key string) map[string]string {
	out := map[string]string{}
	for i, f := range s.Keys {
		out[fmt.Sprintf("%s.keys[%d]", key, i)] = f
	}
	if s.TrustedRoot != "" {
		out[key+".trustedRoot"] = s.TrustedRoot
	}
	if s.Notation != nil {
		for i, f := range s.Notation.TrustStore {
			out[fmt.Sprintf("%s.notation.trustStore[%d]", key, i)] = f
		}
		for i, f := range s.Notation.TimestampStore {
			out[fmt.Sprintf("%s.notation.timestampStore[%d]", key, i)] = f
		}
	}
	return out
}
