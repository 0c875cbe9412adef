package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Media types of the seeded images: uncompressed OCI layers, so seeding
// costs no compression and every byte a contender moves is a byte measured.
const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
)

// blob is one seeded blob on disk.
type blob struct {
	Digest string
	Size   int64
	Path   string
	// CRC is the CRC-32C of the content, for checks cheaper than the
	// digest (fetchBlobCRC).
	CRC uint32
}

// image is one seeded image: its tag, manifest digest and blobs (config
// first).
type image struct {
	Repo, Tag string
	Digest    string
	Blobs     []blob
}

// seeder writes pseudo-random blobs under dir and registers them with the
// origin. Each blob has its own seed, so no two blobs share content and a
// "cold" blob is cold for every contender.
type seeder struct {
	dir    string
	origin *origin
	next   uint64
}

func (s *seeder) blob(size int64) (blob, error) {
	s.next++
	path := filepath.Join(s.dir, fmt.Sprintf("blob-%d", s.next))
	f, err := os.Create(path)
	if err != nil {
		return blob{}, fmt.Errorf("create seed blob: %w", err)
	}
	defer f.Close()
	var key [32]byte
	key[0], key[1] = byte(s.next), byte(s.next>>8)
	h := sha256.New()
	sum := crc32.New(castagnoli)
	w := bufio.NewWriterSize(io.MultiWriter(f, h, sum), 1<<20)
	if _, err := io.CopyN(w, rand.NewChaCha8(key), size); err != nil {
		return blob{}, fmt.Errorf("write seed blob: %w", err)
	}
	if err := w.Flush(); err != nil {
		return blob{}, fmt.Errorf("write seed blob: %w", err)
	}
	// Write the seed out now: otherwise the kernel's writeback of it lands
	// on whichever contender is measured next, as stalled writes.
	if err := f.Sync(); err != nil {
		return blob{}, fmt.Errorf("sync seed blob: %w", err)
	}
	b := blob{Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: size, Path: path, CRC: sum.Sum32()}
	s.origin.addBlob(b.Digest, path)
	return b, nil
}

// drop removes a blob no scenario pulls again, from the origin and from
// disk, and its pages from the page cache with it. A run writes gigabytes
// of blobs, and on a VM whose host backs guest memory lazily, pages the
// guest has not used before are slow to write: on the 2-core VM of
// docs/benchmarks.md, writing 128 MiB files fell from 2.6 GB/s to 0.5 GB/s
// once about 4.5 GiB of new page cache was in use. The fewer pages a run
// holds, the later its rounds reach that point.
func (s *seeder) drop(b blob) error {
	s.origin.removeBlob(b.Digest)
	return os.Remove(b.Path)
}

func (s *seeder) bytesBlob(data []byte) (blob, error) {
	s.next++
	path := filepath.Join(s.dir, fmt.Sprintf("blob-%d", s.next))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return blob{}, fmt.Errorf("write seed blob: %w", err)
	}
	sum := sha256.Sum256(data)
	b := blob{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data)), Path: path, CRC: crc32.Checksum(data, castagnoli)}
	s.origin.addBlob(b.Digest, path)
	return b, nil
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// image seeds repo:tag with layers layers of layerSize bytes each and a
// valid image config whose diff_ids name them.
func (s *seeder) image(repo, tag string, layerSize int64, layers int) (image, error) {
	var ls []blob
	for range layers {
		b, err := s.blob(layerSize)
		if err != nil {
			return image{}, err
		}
		ls = append(ls, b)
	}
	return s.imageOf(repo, tag, ls)
}

// imageOf seeds repo:tag as an image of the given layers, which other
// images may share.
func (s *seeder) imageOf(repo, tag string, ls []blob) (image, error) {
	img := image{Repo: repo, Tag: tag}
	var diffIDs []string
	for _, b := range ls {
		diffIDs = append(diffIDs, b.Digest)
	}
	cfg, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
		"config": map[string]any{},
	})
	if err != nil {
		return image{}, err
	}
	cb, err := s.bytesBlob(cfg)
	if err != nil {
		return image{}, err
	}
	img.Blobs = append([]blob{cb}, ls...)
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        descriptor{mediaConfig, cb.Digest, cb.Size},
	}
	var layerDescs []descriptor
	for _, b := range ls {
		layerDescs = append(layerDescs, descriptor{mediaLayer, b.Digest, b.Size})
	}
	m["layers"] = layerDescs
	body, err := json.Marshal(m)
	if err != nil {
		return image{}, err
	}
	sum := sha256.Sum256(body)
	img.Digest = "sha256:" + hex.EncodeToString(sum[:])
	s.origin.addManifest(repo, tag, manifest{mediaType: mediaManifest, digest: img.Digest, body: body})
	return img, nil
}

// artifact seeds a manifest of mediaType with body and its blobs in repo,
// under tag or, with tag "", by digest only, as a client pushes a
// signature. It returns the manifest's digest.
func (s *seeder) artifact(repo, tag, mediaType string, body []byte, blobs [][]byte) (string, error) {
	for _, b := range blobs {
		if _, err := s.bytesBlob(b); err != nil {
			return "", err
		}
	}
	sum := sha256.Sum256(body)
	d := "sha256:" + hex.EncodeToString(sum[:])
	s.origin.addManifest(repo, tag, manifest{mediaType: mediaType, digest: d, body: body})
	return d, nil
}
