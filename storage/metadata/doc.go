// Package metadata is airlock's index of what it has cached: tags and the
// digests they resolved to, manifest bodies, which repositories reference
// which blobs, when content was last used, and the gate state of each image.
//
// A repository is named "<upstream>/<repository>", for example
// "dockerhub/library/nginx", so the same path on two upstreams never mixes.
//
// [DB] keeps the index in a single bbolt file. Its exported methods are the
// whole contract; a PostgreSQL implementation for shared deployments can
// provide the same methods and run the same conformance tests.
//
// Guarantees:
//   - Writes are durable when the call returns (bbolt commits with fsync),
//     except [DB.Touch], which is deliberately asynchronous: access times
//     are batched in memory and written every few seconds and on Close, so a
//     cache hit never waits for a disk write. A crash loses at most the last
//     few seconds of access times, never any other record.
//   - A manifest is stored only if its body hashes to its digest and is at
//     most [MaxManifestSize] bytes.
//   - Records returned to callers are copies; they stay valid after the
//     transaction that read them and may be modified freely.
//   - Lookups that find nothing return an error wrapping storage.ErrNotFound.
//   - Only one process can open the file; a second one gives up after five
//     seconds with an error saying the file is locked.
//   - [DB.LastUse] is the latest [DB.Touch] of a digest in any repository,
//     written with the access times, or the blob's commit time if that is
//     later and [DB.Reconcile] has run since; it orders eviction of shared
//     blobs.
//
// The file carries a schema version. Open refuses a file written with a
// different version rather than misread it. Buckets added within a version
// are created when an older file is opened (the last-use bucket is filled
// from the access times already there), so upgrading never strands a store.
package metadata
