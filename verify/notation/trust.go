package notation

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/result"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"

	"github.com/airlock-registry/airlock/config"
)

// storeName names the one trust store of each type that the in-memory
// trust policy refers to ("ca:airlock", "tsa:airlock").
const storeName = "airlock"

// policyName names the one statement of the in-memory trust policy.
const policyName = "airlock"

// memoryTrustStore is notation's X509TrustStore over certificates read
// once in New, in place of the directories under ~/.config/notation.
type memoryTrustStore map[truststore.Type][]*x509.Certificate

func (s memoryTrustStore) GetCertificates(_ context.Context, t truststore.Type, name string) ([]*x509.Certificate, error) {
	certs := s[t]
	if name != storeName || len(certs) == 0 {
		return nil, truststore.TrustStoreError{Msg: fmt.Sprintf("the trust store %q of type %q does not exist", name, t)}
	}
	return certs, nil
}

// loadStore reads the PEM files of one trust store type and checks them
// as notation checks the files of its trust store directories.
func loadStore(t truststore.Type, files []string, read func(string) ([]byte, error)) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, f := range files {
		b, err := read(f)
		if err != nil {
			return nil, fmt.Errorf("read Notation %s certificate %s: %w", t, f, err)
		}
		certs, err := parsePEM(b)
		if err != nil {
			return nil, fmt.Errorf("Notation %s certificate %s: %w", t, f, err)
		}
		if err := truststore.ValidateCertificates(certs); err != nil {
			return nil, fmt.Errorf("Notation %s certificate %s: %w; list CA certificates", t, f, err)
		}
		if t == truststore.TypeTSA {
			for _, c := range certs {
				if !bytes.Equal(c.RawSubject, c.RawIssuer) || c.CheckSignatureFrom(c) != nil {
					return nil, fmt.Errorf("Notation %s certificate %s: %q is not a root certificate; timestamp authorities are trusted by their roots", t, f, c.Subject)
				}
			}
		}
		out = append(out, certs...)
	}
	return out, nil
}

// parsePEM parses every CERTIFICATE block of b; it refuses a file with
// none, or with anything else, so that a wrong file is not mistaken for
// an empty trust store.
func parsePEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("holds a PEM %q block; only CERTIFICATE blocks belong in a trust store", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(b)) > 0 {
		return nil, errors.New("holds data that is not PEM after its certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return out, nil
}

// trustPolicy is the one-statement policy document the notation CLI would
// read from trustpolicy.json, applying to every repository: the policies
// of airlock choose the repositories. Revocation is skipped because it
// cannot be checked offline.
func trustPolicy(cfg config.NotationTrust) *trustpolicy.Document {
	stores := []string{string(truststore.TypeCA) + ":" + storeName}
	if len(cfg.TimestampStore) > 0 {
		stores = append(stores, string(truststore.TypeTSA)+":"+storeName)
	}
	return &trustpolicy.Document{
		Version: "1.0",
		TrustPolicies: []trustpolicy.TrustPolicy{{
			Name:           policyName,
			RegistryScopes: []string{"*"},
			SignatureVerification: trustpolicy.SignatureVerification{
				VerificationLevel: trustpolicy.LevelStrict.Name,
				Override:          map[trustpolicy.ValidationType]trustpolicy.ValidationAction{trustpolicy.TypeRevocation: trustpolicy.ActionSkip},
				VerifyTimestamp:   trustpolicy.OptionAlways,
			},
			TrustStores:       stores,
			TrustedIdentities: append([]string(nil), cfg.TrustedIdentities...),
		}},
	}
}

// offlineRevocation stands in for notation's OCSP and CRL validator, which
// would go online. notation skips signing-certificate revocation when the
// policy says so, but always asks about timestamping certificates; this
// answers that each certificate cannot be checked for revocation, which
// notation accepts, rather than fetching anything.
type offlineRevocation struct{}

func (offlineRevocation) ValidateContext(_ context.Context, opts revocation.ValidateContextOptions) ([]*result.CertRevocationResult, error) {
	out := make([]*result.CertRevocationResult, len(opts.CertChain))
	for i := range out {
		out[i] = &result.CertRevocationResult{Result: result.ResultNonRevokable}
	}
	return out, nil
}
