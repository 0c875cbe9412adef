// Package storage keeps airlock's content-addressed blobs.
//
// Blobs live in a distribution storage driver (filesystem, S3, GCS, Azure,
// in-memory) at /blobs/<algorithm>/<first two hex>/<hex>/data. A download is
// written to a [Spool], a local temporary file that concurrent clients can
// read while it grows, and becomes a blob only through [Blobs.Commit].
// [Spool.Append] spools a body at the speed of the link: each read is in
// the file, and readable, before it is hashed, and the hashing runs on a
// goroutine of its own.
//
// Guarantees:
//   - Anything at a final blob path is whole and verified. Commit is the only
//     writer of final paths, it refuses a spool whose bytes do not hash to
//     the digest (independently of any verification the caller did), and it
//     publishes with an atomic rename (local) or a driver move of a fully
//     committed temporary object (remote).
//   - A crash at any point leaves nothing half-written at a final path. What
//     it may leave is spool files and temporary uploads; [Blobs.Recover]
//     removes them at start-up, and a store whose volume they filled still
//     opens so that it can.
//   - A full volume (ENOSPC, or EDQUOT for a spent quota) fails creating,
//     reserving, writing or committing a spool with an error wrapping
//     [ErrNoSpace] and leaves nothing partial visible: the caller can still
//     serve the download without caching it, and a failed commit can be
//     retried or discarded. [Spool.Reserve] preallocates a download's known
//     size so a full volume shows before any byte reaches a client.
//     [Blobs.SpoolBytes] is what downloads in progress hold, for the
//     cache's size.
//   - On the local fast path (a filesystem driver whose root directory is
//     known), [Blobs.Open] returns an *os.File so net/http can use sendfile,
//     and a committed spool stays readable through handles already open on
//     it, because a rename does not disturb open files. [Spool.OpenReader]
//     gives each reader of a growing spool a handle of its own (on Linux),
//     so that it too can be sent with sendfile, from its own position.
//     [Blobs.Discard] empties a spool before removing it, so such handles
//     find it ended and give its room back, however long they stay open.
//   - Committing the same digest twice, concurrently or not, is safe: the
//     content is identical by construction, so whichever lands first wins and
//     the other spool is dropped.
//   - [Blobs.Delete] is how a bounded cache evicts. On the local fast path
//     it only unlinks, so clients already streaming the blob through an
//     open *os.File read it to the end; the next pull fetches it again.
//     [Blobs.Walk] lists committed blobs with their sizes and commit times,
//     and never reports anything that is not a valid blob path.
//
// Digests are validated with verify.Check before they become paths, so a
// hostile digest cannot name a file outside the store.
//
// The package knows nothing of HTTP beyond passing a request through to a
// driver's RedirectURL, and nothing of upstreams.
package storage
