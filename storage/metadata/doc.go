// Package metadata is airlock's index of what it has cached and what it
// decided about it: tags and the digests they resolved to, manifest
// bodies, which repositories reference which blobs, when content was last
// used, the state of each image with the gate, the audit log of every
// change of state, and the outbox of alerts about them.
//
// A repository is named "<upstream>/<repository>", for example
// "dockerhub/library/nginx", so the same path on two upstreams never mixes.
//
// [DB] keeps the index in a single bbolt file. Its buckets:
//
//	meta           schema version, store identity, audit head
//	tags           repo \x00 tag    -> what the tag resolved to
//	manifests      digest           -> manifest body
//	bloblinks      repo \x00 digest -> what the repository knows of a blob ([Link])
//	manifestlinks  repo \x00 digest -> what the repository knows of a manifest
//	access         repo \x00 digest -> last use in the repository
//	lastuse        digest           -> last use anywhere
//	images         repo \x00 digest -> [Image]: state, reasons, verdict, override, tags, pulls
//	audit          seq              -> [AuditRecord], hash-chained
//	outbox         seq              -> [Delivery] not yet delivered
//
// The image states, the audit log and the outbox are the [ImageStore]
// interface, which a PostgreSQL implementation for several replicas
// provides too; package metadatatest is the conformance suite both pass.
//
// Guarantees:
//   - Writes are durable when the call returns (bbolt commits with fsync),
//     except [DB.Touch], which is deliberately asynchronous: access times
//     are batched in memory and written every few seconds and on Close, so a
//     cache hit never waits for a disk write. A crash loses at most the last
//     few seconds of access times, never any other record.
//   - [DB.UpdateImage] and [DB.DeleteImage] write the image, its audit
//     record and its alerts in one transaction: after a crash (kill -9
//     included) an image's state is always its last audit record's, and
//     every committed change's alerts are in the outbox. Write transactions
//     are serial, so audit seqs follow commit order from 1 without gaps.
//   - Each audit record carries the hash of its predecessor and its own
//     ([AuditHash]); the head (last seq and hash) is kept in the meta
//     bucket. [DB.VerifyAudit] finds an edited, removed, inserted or
//     reordered record; a removed tail is found unless the head was
//     rewritten to match, which the anchors held outside the store
//     (Event.Audit in every alert, the head `airlock audit verify` prints)
//     reveal. Nothing in the API changes or removes a record.
//   - Outbox seqs never repeat (the bucket's sequence only grows), and
//     event IDs are "<store id>-<seq>", the store id being random per
//     file: a receiver can drop duplicates by ID. An event stays in the
//     outbox until [DB.Delivered], so it is delivered at least once.
//   - A manifest is stored only if its body hashes to its digest and is at
//     most [MaxManifestSize] bytes.
//   - Records returned to callers are copies; they stay valid after the
//     transaction that read them and may be modified freely.
//   - Lookups that find nothing return an error wrapping storage.ErrNotFound.
//   - Only one process can open the file; a second one gives up after five
//     seconds with an error saying the file is locked. [OpenReadOnly] opens
//     a stopped store for inspection.
//   - [DB.LastUse] is the latest [DB.Touch] of a digest in any repository,
//     written with the access times, or the blob's commit time if that is
//     later and [DB.Reconcile] has run since; it orders eviction of shared
//     blobs.
//
// The file carries a schema version. Open refuses a file written with a
// different version rather than misread it. Buckets added within a version
// are created when an older file is opened (the last-use bucket is filled
// from the access times already there), so upgrading never strands a store;
// the states bucket of earlier builds, which no release wrote, is dropped.
package metadata
