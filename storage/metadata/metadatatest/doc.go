// Package metadatatest is the conformance suite of [metadata.ImageStore]:
// every implementation (the bbolt index now, a PostgreSQL one for several
// replicas later) runs [RunImageStore] unchanged from its own tests, so
// that the gate, the admin API and the alert sender can rely on the same
// behaviour from each.
//
// The suite checks what the interface promises, not how a store keeps it:
// that a change, its audit record and its alerts are written together or
// not at all; that the audit chain has no gaps and verifies, under
// concurrent writers too; that listings page in key order with their
// filters; and that the outbox hands out what is due, oldest first, and
// keeps count of failed attempts. Tampering with a store's records is
// specific to each store and is tested beside it.
package metadatatest
