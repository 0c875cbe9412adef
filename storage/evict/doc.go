// Package evict bounds the blob cache: an [Evictor] measures the store and,
// when it holds more than its maximum, deletes the least recently used
// blobs until it is back under a low-water mark.
//
// A blob's last use is the later of its commit time (the time its file or
// object was written) and the latest use recorded for its digest in any
// repository. Blobs are shared across repositories, so only the latest use
// anywhere says whether a blob is still wanted.
//
// The size bounded is everything the cache keeps: committed
// blobs, spool files of downloads in progress (what each has written or
// reserved, whichever is more) and the metadata index file, where
// manifests live. Only blobs can be evicted; spools and the index count,
// and blobs make room for them.
//
// Guarantees:
//   - Nothing is deleted while the cache is at or under its maximum, and
//     nothing at all with a maximum of zero (unlimited); such a sweep only
//     measures. The exception is the sweep [Evictor.Nudge] asks for when a
//     write found the volume full: the volume holds less than the maximum
//     allows for, so that sweep trims to the low-water mark of what the
//     cache holds.
//   - A sweep holds at most 65536 candidates in memory, however many blobs
//     the store has; one that needed more asks for the next at once.
//   - After a sweep, the cache holds at most the maximum, or, when that
//     cannot be reached, only blobs committed or used within MinAge
//     (default 10 minutes) besides spools and the index: a blob that young
//     is never evicted, because a pull in progress must not lose the layers
//     it has just fetched. The sweep then warns. The last use is read
//     again just before each deletion, so a use seconds before is still
//     seen.
//   - Between sweeps the cache grows by what is pulled; the next sweep
//     takes it back down. [Evictor.Nudge] brings that sweep forward when a
//     write finds the volume full. The volume needs room for that, and for the
//     filesystem's own overhead (directories, partly used blocks), which
//     is not measured.
//   - Eviction deletes only blobs. Manifests, tags and gate states stay in
//     the metadata index; an evicted blob is fetched again, and verified
//     again, on its next pull.
//   - A client already streaming a blob from the local store reads it to
//     the end when it is evicted (see storage.Blobs.Delete).
//   - Sweeps never run concurrently; [Evictor.Run] logs failures and keeps
//     going rather than stop the process.
package evict
