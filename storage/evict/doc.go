// Package evict bounds the blob cache: an [Evictor] measures the store and,
// when it holds more than its maximum, deletes the least recently used
// blobs until it is back under a low-water mark.
//
// A blob's last use is the later of its commit time (the time its file or
// object was written) and the latest use recorded for its digest in any
// repository. Blobs are shared across repositories, so only the latest use
// anywhere says whether a blob is still wanted.
//
// Guarantees:
//   - Nothing is deleted while the store is at or under its maximum, and
//     nothing at all with a maximum of zero (unlimited); such a sweep only
//     measures.
//   - A blob committed or used within MinAge (default 10 minutes) is never
//     evicted, even if that leaves the store over its maximum: a pull in
//     progress must not lose the layers it has just fetched. The last use
//     is read again just before each deletion, so a use seconds before is
//     still seen.
//   - Eviction deletes only blobs. Manifests, tags and gate states are
//     small and stay in the metadata index; an evicted blob is fetched
//     again, and verified again, on its next pull.
//   - A client already streaming a blob from the local store reads it to
//     the end when it is evicted (see storage.Blobs.Delete).
//   - Sweeps never run concurrently; [Evictor.Run] logs failures and keeps
//     going rather than stop the process.
//
// The size measured is the sum of committed blob sizes, not the disk
// usage: spool files of downloads in progress and filesystem overhead
// come on top, so leave headroom between the maximum and the volume size.
package evict
