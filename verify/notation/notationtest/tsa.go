package notationtest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/notaryproject/tspclient-go"
	"github.com/notaryproject/tspclient-go/pki"
)

// TSA is an in-process RFC 3161 timestamping authority: a root CA, a
// timestamping certificate it issued, and a tspclient.Timestamper that
// answers requests with tokens signed by that certificate, in CMS as real
// TSAs sign them. Its clock can be set, to timestamp a signature in the
// past.
type TSA struct {
	// Root is the TSA's root, what a timestampStore trusts; Cert is the
	// certificate that signs the tokens.
	Root, Cert *x509.Certificate
	key        *rsa.PrivateKey
	// At is the time the TSA stamps; time.Now when zero.
	At time.Time
}

// ASN.1 object identifiers of RFC 3161 and RFC 5652.
var (
	oidSignedData           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidTSTInfo              = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 4}
	oidContentType          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidMessageDigest        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidSigningTime          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	oidSigningCertificateV2 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 2, 47}
	oidSHA256               = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA256WithRSA        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidTestPolicy           = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}
)

// NewTSA generates a TSA whose root and timestamping certificate are
// valid from a year ago for two years; the timestamping certificate has
// the critical timestamping extended key usage that Notation requires.
func NewTSA(tb testing.TB) *TSA {
	tb.Helper()
	rootKey, key := newKey(tb), rsaKey(tb)
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{"Airlock Test"}, CommonName: "airlock test TSA root"},
		NotBefore:             now.Add(-365 * 24 * time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	t := &TSA{Root: issue(tb, rootTmpl, rootTmpl, rootKey.Public(), rootKey), key: key}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{"Airlock Test"}, CommonName: "airlock test TSA"},
		NotBefore:             rootTmpl.NotBefore,
		NotAfter:              rootTmpl.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: eku}},
	}
	t.Cert = issue(tb, tmpl, t.Root, key.Public(), rootKey)
	return t
}

func rsaKey(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatalf("TSA key: %v", err)
	}
	return k
}

// RootPEM is the TSA's root in PEM, the content of a timestampStore
// file.
func (t *TSA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: t.Root.Raw})
}

// Roots is a pool of the TSA's root, as a signer needs it.
func (t *TSA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(t.Root)
	return p
}

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"`
}

type signedData struct {
	Version          int
	DigestAlgorithms []pkix.AlgorithmIdentifier `asn1:"set"`
	EncapContentInfo encapContentInfo
	Certificates     asn1.RawValue `asn1:"optional,tag:0"`
	SignerInfos      []signerInfo  `asn1:"set"`
}

type encapContentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     []byte `asn1:"explicit,optional,tag:0"`
}

type signerInfo struct {
	Version            int
	SID                issuerAndSerial
	DigestAlgorithm    pkix.AlgorithmIdentifier
	SignedAttrs        []attribute `asn1:"optional,tag:0"`
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Signature          []byte
}

type issuerAndSerial struct {
	Issuer asn1.RawValue
	Serial *big.Int
}

type attribute struct {
	Type   asn1.ObjectIdentifier
	Values asn1.RawValue `asn1:"set"`
}

type essCertIDv2 struct {
	CertHash []byte
}

type signingCertificateV2 struct {
	Certs []essCertIDv2
}

// Timestamp answers a timestamp request with a granted response whose
// token is signed by the TSA and carries its certificate and root.
func (t *TSA) Timestamp(_ context.Context, req *tspclient.Request) (*tspclient.Response, error) {
	at := t.At
	if at.IsZero() {
		at = time.Now()
	}
	info, err := asn1.Marshal(tspclient.TSTInfo{
		Version:        1,
		Policy:         oidTestPolicy,
		MessageImprint: req.MessageImprint,
		SerialNumber:   big.NewInt(at.UnixNano()),
		GenTime:        at.UTC().Truncate(time.Second),
		Accuracy:       tspclient.Accuracy{Seconds: 1},
		Nonce:          req.Nonce,
	})
	if err != nil {
		return nil, fmt.Errorf("TSTInfo: %w", err)
	}
	infoSum := sha256.Sum256(info)
	certSum := sha256.Sum256(t.Cert.Raw)
	attrs := []attribute{
		{Type: oidContentType, Values: set(oidTSTInfo)},
		{Type: oidMessageDigest, Values: set(infoSum[:])},
		{Type: oidSigningTime, Values: set(at.UTC())},
		{Type: oidSigningCertificateV2, Values: set(signingCertificateV2{Certs: []essCertIDv2{{CertHash: certSum[:]}}})},
	}
	// The signature covers the DER of the attributes as a SET, not as
	// the [0] IMPLICIT field they are stored in.
	encoded, err := asn1.MarshalWithParams(attrs, "set")
	if err != nil {
		return nil, fmt.Errorf("signed attributes: %w", err)
	}
	attrSum := sha256.Sum256(encoded)
	sig, err := rsa.SignPKCS1v15(rand.Reader, t.key, crypto.SHA256, attrSum[:])
	if err != nil {
		return nil, err
	}
	sd, err := asn1.Marshal(signedData{
		Version:          3,
		DigestAlgorithms: []pkix.AlgorithmIdentifier{{Algorithm: oidSHA256}},
		EncapContentInfo: encapContentInfo{ContentType: oidTSTInfo, Content: info},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: append(append([]byte(nil), t.Cert.Raw...), t.Root.Raw...)},
		SignerInfos: []signerInfo{{
			Version:            1,
			SID:                issuerAndSerial{Issuer: asn1.RawValue{FullBytes: t.Cert.RawIssuer}, Serial: t.Cert.SerialNumber},
			DigestAlgorithm:    pkix.AlgorithmIdentifier{Algorithm: oidSHA256},
			SignedAttrs:        attrs,
			SignatureAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA256WithRSA},
			Signature:          sig,
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("signed data: %w", err)
	}
	// A RawValue is written as is, so the [0] EXPLICIT wrapper is spelled
	// out.
	token, err := asn1.Marshal(contentInfo{ContentType: oidSignedData, Content: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sd}})
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	var raw asn1.RawValue
	if _, err := asn1.Unmarshal(token, &raw); err != nil {
		return nil, err
	}
	return &tspclient.Response{Status: pki.StatusInfo{Status: pki.StatusGranted}, TimestampToken: raw}, nil
}

// set is the DER SET holding the one value v, as an attribute's values.
func set(v any) asn1.RawValue {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("notationtest: marshal %T: %v", v, err))
	}
	return asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: b}
}
