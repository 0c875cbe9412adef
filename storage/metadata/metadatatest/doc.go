// Package metadatatest is the conformance suite of airlock's metadata
// stores: every implementation (the embedded bbolt index, the PostgreSQL
// store several replicas share) runs it unchanged from its own tests, so
// that the proxy, the gate, the admin API and the alert sender can rely on
// the same behaviour from each.
//
// [RunImageStore] covers [metadata.ImageStore]: that a change, its audit
// record and its alerts are written together or not at all; that the
// audit chain has no gaps and verifies, under concurrent writers too; that
// listings page in key order with their filters; and that the outbox hands
// out what is due, oldest first, and keeps count of failed attempts.
//
// [RunContentIndex] covers [ContentIndex], what the pull path reads and
// writes: tags, manifests, the links that say what a repository may serve,
// access times, and the upkeep the gateway runs at start-up.
//
// The suites check what the interfaces promise, not how a store keeps it.
// Tampering with a store's records is specific to each store and is tested
// beside it.
package metadatatest
