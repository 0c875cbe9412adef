// Package postgres keeps airlock's metadata index in PostgreSQL, so that
// several replicas share one: tags and what they resolved to, manifest
// bodies, which repositories reference which blobs, last-use times, image
// states, the audit log and the alert outbox. It is the same index as
// package metadata's bbolt [metadata.DB] and passes the same conformance
// suite (metadatatest.RunImageStore) unchanged.
//
// Schema: every table is named airlock_meta_*. Migrations are embedded SQL
// files named NNNN_name.sql, applied in order at Open inside one
// transaction holding an advisory lock, so replicas starting together apply
// each once. They are forward-only: a database carrying a version this
// build does not know is refused rather than misread.
//
// Changes are announced on the NOTIFY channel airlock_metadata, so that
// every replica drops what it holds in memory about the changed key. Reads
// on the warm pull path are answered from memory; see [Options.Staleness]
// for how stale an answer may be when the announcements stop arriving.
package postgres
