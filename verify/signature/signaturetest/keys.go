package signaturetest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// Alg is a key algorithm cosign signs with.
type Alg string

// The algorithms of NewKey.
const (
	ECDSA   Alg = "ecdsa-p256"
	RSA     Alg = "rsa-2048"
	Ed25519 Alg = "ed25519"
)

// Key is a signing key pair.
type Key struct {
	Alg    Alg
	Signer crypto.Signer
	// PublicPEM is the public key as cosign writes cosign.pub (PKIX, "PUBLIC KEY").
	PublicPEM []byte
}

// NewKey makes a key pair of alg.
func NewKey(tb testing.TB, alg Alg) *Key {
	tb.Helper()
	var signer crypto.Signer
	var err error
	switch alg {
	case ECDSA:
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA:
		signer, err = rsa.GenerateKey(rand.Reader, 2048)
	case Ed25519:
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	default:
		tb.Fatalf("unknown key algorithm %q", alg)
	}
	if err != nil {
		tb.Fatalf("generating %s key: %v", alg, err)
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		tb.Fatalf("encoding %s public key: %v", alg, err)
	}
	return &Key{Alg: alg, Signer: signer, PublicPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}
}

// ID is the key's fingerprint as airlock reports it: "sha256:" and the hex
// SHA-256 of its PKIX encoding.
func (k *Key) ID() string {
	der, _ := x509.MarshalPKIXPublicKey(k.Signer.Public())
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// WritePublic writes the PEM public key into dir and returns its path.
func (k *Key) WritePublic(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, string(k.Alg)+"-"+k.ID()[len("sha256:"):][:12]+".pub")
	if err := os.WriteFile(path, k.PublicPEM, 0o600); err != nil {
		tb.Fatalf("writing public key: %v", err)
	}
	return path
}

// Sign signs message as cosign does with a key: ECDSA and RSA (PKCS #1
// v1.5) over its SHA-256, Ed25519 over the message itself.
func (k *Key) Sign(tb testing.TB, message []byte) []byte {
	tb.Helper()
	var sig []byte
	var err error
	switch k.Alg {
	case Ed25519:
		sig, err = k.Signer.Sign(rand.Reader, message, crypto.Hash(0))
	default:
		sum := sha256.Sum256(message)
		sig, err = k.Signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		tb.Fatalf("signing with %s key: %v", k.Alg, err)
	}
	return sig
}
