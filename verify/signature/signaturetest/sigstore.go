package signaturetest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	ct "github.com/google/certificate-transparency-go"
	cttls "github.com/google/certificate-transparency-go/tls"
	ctx509 "github.com/google/certificate-transparency-go/x509"
	ctx509util "github.com/google/certificate-transparency-go/x509util"
	"github.com/opencontainers/go-digest"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/rekor/pkg/types"
	hashedrekord "github.com/sigstore/rekor/pkg/types/hashedrekord/v0.0.1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/airlock-registry/airlock/verify/signature"
)

// VirtualSigstore is an in-process Sigstore: a Fulcio CA whose
// certificates carry SCTs from its CT log, a Rekor log and a timestamp
// authority. Its trusted root is the only way to trust it.
type VirtualSigstore struct {
	rekor        *ca.VirtualSigstore // Rekor log and timestamp authority
	fulcio       *root.FulcioCertificateAuthority
	intermediate *ecdsa.PrivateKey
	ctKey        *ecdsa.PrivateKey
	ctLogID      [32]byte
	noSCT        bool
}

// WithoutSCT returns the same Sigstore issuing certificates without a
// signed certificate timestamp, as a CA outside certificate
// transparency would.
func (vs *VirtualSigstore) WithoutSCT() *VirtualSigstore {
	c := *vs
	c.noSCT = true
	return &c
}

// NewVirtualSigstore starts a Sigstore whose CAs are valid from five
// hours ago to one hour from now.
func NewVirtualSigstore(tb testing.TB) *VirtualSigstore {
	tb.Helper()
	rekor, err := ca.NewVirtualSigstore()
	if err != nil {
		tb.Fatalf("virtual sigstore: %v", err)
	}
	rootCert, rootKey, err := ca.GenerateRootCa()
	if err != nil {
		tb.Fatalf("fulcio root: %v", err)
	}
	interCert, interKey, err := ca.GenerateFulcioIntermediate(rootCert, rootKey)
	if err != nil {
		tb.Fatalf("fulcio intermediate: %v", err)
	}
	ctKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("ct log key: %v", err)
	}
	der, err := x509.MarshalPKIXPublicKey(ctKey.Public())
	if err != nil {
		tb.Fatalf("ct log key: %v", err)
	}
	return &VirtualSigstore{
		rekor: rekor,
		fulcio: &root.FulcioCertificateAuthority{
			Root: rootCert, Intermediates: []*x509.Certificate{interCert},
			ValidityPeriodStart: time.Now().Add(-5 * time.Hour), ValidityPeriodEnd: time.Now().Add(time.Hour),
			URI: "https://fulcio.virtual.test",
		},
		intermediate: interKey,
		ctKey:        ctKey,
		ctLogID:      sha256.Sum256(der),
	}
}

// TrustedRoot is the Sigstore's trusted root: its Fulcio CA, CT log,
// Rekor log and timestamp authority.
func (vs *VirtualSigstore) TrustedRoot(tb testing.TB) *root.TrustedRoot {
	tb.Helper()
	rekorLogs := map[string]*root.TransparencyLog{}
	for id, l := range vs.rekor.RekorLogs() {
		// pkg/testing/ca puts the hex string into ID; the trusted root
		// format wants the key ID's bytes.
		raw, err := hex.DecodeString(id)
		if err != nil {
			tb.Fatalf("rekor log id: %v", err)
		}
		fixed := *l
		fixed.ID = raw
		rekorLogs[id] = &fixed
	}
	ctID := hex.EncodeToString(vs.ctLogID[:])
	ctLogs := map[string]*root.TransparencyLog{ctID: {
		BaseURL: "https://ctfe.virtual.test", ID: vs.ctLogID[:],
		ValidityPeriodStart: time.Now().Add(-5 * time.Hour), ValidityPeriodEnd: time.Now().Add(time.Hour),
		HashFunc: crypto.SHA256, PublicKey: vs.ctKey.Public(), SignatureHashFunc: crypto.SHA256,
	}}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01,
		[]root.CertificateAuthority{vs.fulcio}, ctLogs, vs.rekor.TimestampingAuthorities(), rekorLogs)
	if err != nil {
		tb.Fatalf("trusted root: %v", err)
	}
	return tr
}

// TrustedRootJSON is TrustedRoot as trusted_root.json.
func (vs *VirtualSigstore) TrustedRootJSON(tb testing.TB) []byte {
	tb.Helper()
	b, err := vs.TrustedRoot(tb).MarshalJSON()
	if err != nil {
		tb.Fatalf("trusted root json: %v", err)
	}
	return b
}

// WriteTrustedRoot writes trusted_root.json into dir and returns its path.
func (vs *VirtualSigstore) WriteTrustedRoot(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, "trusted_root.json")
	if err := os.WriteFile(path, vs.TrustedRootJSON(tb), 0o600); err != nil {
		tb.Fatalf("writing trusted root: %v", err)
	}
	return path
}

// Certificate issues a short-lived signing certificate for identity (an
// email address, or a URI such as a workflow's) from OIDC issuer, with an
// embedded SCT from the Sigstore's CT log, as Fulcio does.
func (vs *VirtualSigstore) Certificate(tb testing.TB, identity, issuer string) (*x509.Certificate, *ecdsa.PrivateKey) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("leaf key: %v", err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	template := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(10 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		ExtraExtensions: []pkix.Extension{{
			// Fulcio's OIDC issuer (v1) extension.
			Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}, Value: []byte(issuer),
		}},
	}
	if u, err := url.Parse(identity); err == nil && u.Scheme != "" && u.Host != "" {
		template.URIs = []*url.URL{u}
	} else {
		template.EmailAddresses = []string{identity}
	}
	issuerCert := vs.fulcio.Intermediates[0]
	pre := vs.createCert(tb, template, issuerCert, key)
	if vs.noSCT {
		return pre, key
	}

	// The SCT signs the certificate as it is without the SCT extension,
	// which is what a verifier rebuilds from the final certificate.
	sct := ct.SignedCertificateTimestamp{SCTVersion: ct.V1, LogID: ct.LogID{KeyID: vs.ctLogID}, Timestamp: uint64(time.Now().UnixMilli())}
	entry := ct.LogEntry{Leaf: ct.MerkleTreeLeaf{Version: ct.V1, LeafType: ct.TimestampedEntryLeafType,
		TimestampedEntry: &ct.TimestampedEntry{Timestamp: sct.Timestamp, EntryType: ct.PrecertLogEntryType,
			PrecertEntry: &ct.PreCert{IssuerKeyHash: sha256.Sum256(issuerCert.RawSubjectPublicKeyInfo), TBSCertificate: pre.RawTBSCertificate}}}}
	input, err := ct.SerializeSCTSignatureInput(sct, entry)
	if err != nil {
		tb.Fatalf("sct input: %v", err)
	}
	sum := sha256.Sum256(input)
	sig, err := ecdsa.SignASN1(rand.Reader, vs.ctKey, sum[:])
	if err != nil {
		tb.Fatalf("signing sct: %v", err)
	}
	sct.Signature = ct.DigitallySigned{Algorithm: cttls.SignatureAndHashAlgorithm{Hash: cttls.SHA256, Signature: cttls.ECDSA}, Signature: sig}
	list, err := ctx509util.MarshalSCTsIntoSCTList([]*ct.SignedCertificateTimestamp{&sct})
	if err != nil {
		tb.Fatalf("sct list: %v", err)
	}
	listBytes, err := cttls.Marshal(*list)
	if err != nil {
		tb.Fatalf("sct list: %v", err)
	}
	ext, err := asn1.Marshal(listBytes)
	if err != nil {
		tb.Fatalf("sct extension: %v", err)
	}
	template.ExtraExtensions = append(template.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier(ctx509.OIDExtensionCTSCT), Value: ext})
	return vs.createCert(tb, template, issuerCert, key), key
}

func (vs *VirtualSigstore) createCert(tb testing.TB, template, parent *x509.Certificate, key *ecdsa.PrivateKey) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, template, parent, key.Public(), vs.intermediate)
	if err != nil {
		tb.Fatalf("issuing certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("issuing certificate: %v", err)
	}
	return cert
}

// rekorLogID is the hex key ID of the Sigstore's Rekor log.
func (vs *VirtualSigstore) rekorLogID(tb testing.TB) string {
	tb.Helper()
	id, err := vs.rekor.RekorLogID()
	if err != nil {
		tb.Fatalf("rekor log id: %v", err)
	}
	return id
}

// hashedRekordBody is the canonical Rekor v1 hashedrekord entry for a
// signature over payload by the holder of publicPEM (a certificate or a
// public key).
func hashedRekordBody(tb testing.TB, payload, sig, publicPEM []byte) []byte {
	tb.Helper()
	sum := sha256.Sum256(payload)
	ctx := context.Background()
	props := types.ArtifactProperties{
		ArtifactHash:   hex.EncodeToString(sum[:]),
		SignatureBytes: sig,
		PublicKeyBytes: [][]byte{publicPEM},
		PKIFormat:      "x509",
	}
	pe, err := hashedrekord.V001Entry{}.CreateFromArtifactProperties(ctx, props)
	if err != nil {
		tb.Fatalf("hashedrekord entry: %v", err)
	}
	impl, err := types.UnmarshalEntry(pe)
	if err != nil {
		tb.Fatalf("hashedrekord entry: %v", err)
	}
	body, err := types.CanonicalizeEntry(ctx, impl)
	if err != nil {
		tb.Fatalf("hashedrekord entry: %v", err)
	}
	return body
}

// RekorBundle logs a signature in the Sigstore's Rekor and returns
// cosign's dev.sigstore.cosign/bundle annotation for it: the entry with
// its signed entry timestamp, integrated now.
func (vs *VirtualSigstore) RekorBundle(tb testing.TB, payload, sig, publicPEM []byte) string {
	tb.Helper()
	return vs.rekorBundle(tb, hashedRekordBody(tb, payload, sig, publicPEM))
}

// rekorBundle logs a canonical entry body and returns cosign's bundle
// annotation for it.
func (vs *VirtualSigstore) rekorBundle(tb testing.TB, body []byte) string {
	tb.Helper()
	p := tlog.RekorPayload{Body: base64.StdEncoding.EncodeToString(body), IntegratedTime: time.Now().Unix(),
		LogIndex: 1000, LogID: vs.rekorLogID(tb)}
	set, err := vs.rekor.RekorSignPayload(p)
	if err != nil {
		tb.Fatalf("signing rekor entry: %v", err)
	}
	b, err := json.Marshal(struct {
		SignedEntryTimestamp []byte
		Payload              tlog.RekorPayload
	}{set, p})
	if err != nil {
		tb.Fatalf("rekor bundle: %v", err)
	}
	return string(b)
}

// Timestamp is cosign's dev.sigstore.cosign/rfc3161timestamp annotation
// for sig, from the Sigstore's timestamp authority.
func (vs *VirtualSigstore) Timestamp(tb testing.TB, sig []byte) string {
	tb.Helper()
	tsr, err := vs.rekor.TimestampResponse(sig)
	if err != nil {
		tb.Fatalf("timestamp: %v", err)
	}
	b, _ := json.Marshal(struct{ SignedRFC3161Timestamp []byte }{tsr})
	return string(b)
}

// SignKeyless signs payload as `cosign sign` does keylessly (legacy tag
// scheme): a Fulcio certificate for identity from issuer, its chain, the
// Rekor bundle and an RFC 3161 timestamp. Delete AnnotationBundle from
// the result for a signature that cannot be checked offline.
func (vs *VirtualSigstore) SignKeyless(tb testing.TB, identity, issuer string, payload []byte) Layer {
	tb.Helper()
	cert, key := vs.Certificate(tb, identity, issuer)
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		tb.Fatalf("signing: %v", err)
	}
	certPEM, _ := cryptoutils.MarshalCertificateToPEM(cert)
	chain, _ := cryptoutils.MarshalCertificatesToPEM([]*x509.Certificate{vs.fulcio.Intermediates[0], vs.fulcio.Root})
	return Layer{Payload: payload, Annotations: map[string]string{
		AnnotationSignature:   base64.StdEncoding.EncodeToString(sig),
		AnnotationCertificate: string(certPEM),
		AnnotationChain:       string(chain),
		AnnotationBundle:      vs.RekorBundle(tb, payload, sig, certPEM),
		AnnotationTimestamp:   vs.Timestamp(tb, sig),
	}}
}

// SignKeyWithLog signs payload with k and logs it in the Sigstore's Rekor,
// as `cosign sign --key` does with the transparency log on.
func (vs *VirtualSigstore) SignKeyWithLog(tb testing.TB, k *Key, payload []byte) Layer {
	tb.Helper()
	l := SignKey(tb, k, payload)
	sig, _ := base64.StdEncoding.DecodeString(l.Annotations[AnnotationSignature])
	l.Annotations[AnnotationBundle] = vs.RekorBundle(tb, payload, sig, k.PublicPEM)
	return l
}

// BundleOptions describe a cosign v3 bundle.
type BundleOptions struct {
	// Subject is the image digest the statement names.
	Subject digest.Digest
	// PredicateType defaults to cosign's signature predicate,
	// https://sigstore.dev/cosign/sign/v1; any other makes an attestation.
	PredicateType string
	// Identity and Issuer sign keylessly; Key, when set, signs instead
	// (without a log entry).
	Identity, Issuer string
	Key              *Key
}

// BundleV3 makes a Sigstore bundle v0.3 as `cosign sign` (v3) attaches
// it: DSSE over an in-toto statement about Subject; keyless ones carry the
// certificate, a Rekor dsse entry with inclusion proof and promise, and
// an RFC 3161 timestamp.
func (vs *VirtualSigstore) BundleV3(tb testing.TB, o BundleOptions) []byte {
	tb.Helper()
	if o.PredicateType == "" {
		o.PredicateType = signature.CosignSignPredicateType
	}
	statement := Statement(tb, o.Subject, o.PredicateType)
	const payloadType = "application/vnd.in-toto+json"
	pae := dsse.PAE(payloadType, statement)
	var sig []byte
	var cert *x509.Certificate
	if o.Key != nil {
		sig = o.Key.Sign(tb, pae)
	} else {
		var key *ecdsa.PrivateKey
		cert, key = vs.Certificate(tb, o.Identity, o.Issuer)
		sum := sha256.Sum256(pae)
		var err error
		if sig, err = ecdsa.SignASN1(rand.Reader, key, sum[:]); err != nil {
			tb.Fatalf("signing: %v", err)
		}
	}
	pb := &protobundle.Bundle{
		MediaType: "application/vnd.dev.sigstore.bundle.v0.3+json",
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload: statement, PayloadType: payloadType, Signatures: []*protodsse.Signature{{Sig: sig}}}},
		VerificationMaterial: &protobundle.VerificationMaterial{},
	}
	if o.Key != nil {
		pb.VerificationMaterial.Content = &protobundle.VerificationMaterial_PublicKey{PublicKey: &protocommon.PublicKeyIdentifier{Hint: o.Key.ID()}}
	} else {
		pb.VerificationMaterial.Content = &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: cert.Raw}}
		pb.VerificationMaterial.TlogEntries = []*protorekor.TransparencyLogEntry{vs.dsseEntry(tb, cert, statement, payloadType, sig)}
		tsr, err := vs.rekor.TimestampResponse(sig)
		if err != nil {
			tb.Fatalf("timestamp: %v", err)
		}
		pb.VerificationMaterial.TimestampVerificationData = &protobundle.TimestampVerificationData{
			Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: tsr}}}
	}
	b, err := bundle.NewBundle(pb)
	if err != nil {
		tb.Fatalf("bundle: %v", err)
	}
	out, err := b.MarshalJSON()
	if err != nil {
		tb.Fatalf("bundle json: %v", err)
	}
	return out
}

// Statement is an in-toto v1 statement of predicateType about subject,
// with an empty predicate.
func Statement(tb testing.TB, subject digest.Digest, predicateType string) []byte {
	tb.Helper()
	statement, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []map[string]any{{"name": "image", "digest": map[string]string{subject.Algorithm().String(): subject.Encoded()}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	})
	if err != nil {
		tb.Fatalf("statement: %v", err)
	}
	return statement
}

// AttestKeyless makes a cosign tag-scheme attestation ("sha256-<hex>.att"
// layer) of predicateType about subject, signed keylessly as `cosign
// attest` does: a DSSE envelope with the certificate, chain, Rekor bundle
// and timestamp annotations.
func (vs *VirtualSigstore) AttestKeyless(tb testing.TB, identity, issuer string, subject digest.Digest, predicateType string) Layer {
	tb.Helper()
	statement := Statement(tb, subject, predicateType)
	const payloadType = "application/vnd.in-toto+json"
	cert, key := vs.Certificate(tb, identity, issuer)
	sum := sha256.Sum256(dsse.PAE(payloadType, statement))
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		tb.Fatalf("signing: %v", err)
	}
	env := &dsse.Envelope{PayloadType: payloadType, Payload: base64.StdEncoding.EncodeToString(statement),
		Signatures: []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}}}
	entry, err := vs.rekor.GenerateTlogEntry(cert, env, sig, time.Now().Unix(), false)
	if err != nil {
		tb.Fatalf("rekor entry: %v", err)
	}
	certPEM, _ := cryptoutils.MarshalCertificateToPEM(cert)
	chain, _ := cryptoutils.MarshalCertificatesToPEM([]*x509.Certificate{vs.fulcio.Intermediates[0], vs.fulcio.Root})
	body, _ := json.Marshal(env)
	return Layer{MediaType: signature.DSSEMediaType, Payload: body, Annotations: map[string]string{
		"predicateType":       predicateType,
		AnnotationSignature:   "",
		AnnotationCertificate: string(certPEM),
		AnnotationChain:       string(chain),
		AnnotationBundle:      vs.rekorBundle(tb, entry.TransparencyLogEntry().CanonicalizedBody),
	}}
}

// AttestKey makes a cosign tag-scheme attestation of predicateType about
// subject signed with k (without a log entry).
func AttestKey(tb testing.TB, k *Key, subject digest.Digest, predicateType string) Layer {
	tb.Helper()
	statement := Statement(tb, subject, predicateType)
	const payloadType = "application/vnd.in-toto+json"
	sig := k.Sign(tb, dsse.PAE(payloadType, statement))
	body, _ := json.Marshal(&dsse.Envelope{PayloadType: payloadType, Payload: base64.StdEncoding.EncodeToString(statement),
		Signatures: []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}}})
	return Layer{MediaType: signature.DSSEMediaType, Payload: body, Annotations: map[string]string{
		"predicateType": predicateType, AnnotationSignature: ""}}
}

// dsseEntry logs a DSSE envelope in the Sigstore's Rekor and returns the
// bundle's log entry, with what pkg/testing/ca leaves out: kind and
// version, and the inclusion promise beside the proof.
func (vs *VirtualSigstore) dsseEntry(tb testing.TB, cert *x509.Certificate, statement []byte, payloadType string, sig []byte) *protorekor.TransparencyLogEntry {
	tb.Helper()
	env := &dsse.Envelope{PayloadType: payloadType, Payload: base64.StdEncoding.EncodeToString(statement),
		Signatures: []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}}}
	integrated := time.Now().Unix()
	entry, err := vs.rekor.GenerateTlogEntry(cert, env, sig, integrated, true)
	if err != nil {
		tb.Fatalf("rekor entry: %v", err)
	}
	tle := entry.TransparencyLogEntry()
	set, err := vs.rekor.RekorSignPayload(tlog.RekorPayload{
		Body: base64.StdEncoding.EncodeToString(tle.CanonicalizedBody), IntegratedTime: integrated,
		LogIndex: tle.LogIndex, LogID: vs.rekorLogID(tb)})
	if err != nil {
		tb.Fatalf("signing rekor entry: %v", err)
	}
	tle.KindVersion = &protorekor.KindVersion{Kind: "dsse", Version: "0.0.1"}
	tle.InclusionPromise = &protorekor.InclusionPromise{SignedEntryTimestamp: set}
	return tle
}
