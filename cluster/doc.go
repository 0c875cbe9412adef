// Package cluster is what several airlock replicas share beyond the
// metadata database: leases on the blobs being fetched, the peer
// listener that streams a fill to the other replicas, and singletons
// (work only one replica may do at a time).
//
// # One upstream transfer per blob
//
// Before a replica fetches blob d from upstream u it claims the fill's
// lease: a row (u, d) in airlock_cluster_fills naming the replica and its
// peer address, taken by one INSERT … ON CONFLICT … DO UPDATE that
// succeeds only where there is no row, the row's lease expired, or the
// row is the replica's own, or its address's (a predecessor killed and
// restarted there: ClaimFill). The holder renews it every TTL/3
// and gives it up when the fill ends, committed or failed, by expiring
// the row; a replica that dies stops renewing, and its lease expires after
// the TTL (10 s by default). Expiry is judged by the database's clock
// only, so replicas' clocks need not agree. An ended fill's row is kept
// for an hour: a claim that takes over a row, rather than inserting one,
// tells its caller to look in the store once more before fetching, since
// the fill that held it commits before giving it up. Without that, a fill
// ending between another replica's look in the store and its claim would
// be fetched twice.
//
// A replica that finds the lease held by another reads the blob from that
// replica's peer listener instead of the upstream (OpenPeerFill): the
// leader streams its growing spool, the way its local clients read it,
// or the stored blob if the fill committed meanwhile. The reading replica
// treats the peer like an upstream: it bounds the bytes by the fill's
// limit, hashes them and commits nothing that does not match the digest,
// and its own clients read along its own spool. A peer is trusted with
// nothing but speed.
//
// When the stream breaks mid-blob the reader claims again, from the
// offset it has. Should the broken peer still hold the lease, the claim
// waits until the lease either expires (the peer died: the reader, or
// another replica, takes over and resumes from the upstream) or is
// renewed twice (the peer lives: it is read again). Either happens within one
// TTL; a lease that does neither for two (a replica with a far longer TTL)
// sends the reader to the upstream instead. A stream that merely stops is cut once the peer's lease lapses
// while nothing arrives, or after three TTLs without a byte whatever the
// lease says (a connection lost in a partition), so no reader waits on a
// dead connection. A peer
// that cannot be reached within the connect timeout (1 s) is a partition:
// the reader fetches the blob itself, logs it and counts it in
// airlock_cluster_peer_fallbacks_total. Correctness holds; only the
// upstream's transfer count rises. A database that cannot be asked has
// the same effect: each replica fetches on its own, as a single replica.
//
// # The peer listener
//
// The listener (Handler) serves fills and stored blobs only to peers that
// present the cluster's secret, a random value the first replica creates
// in airlock_cluster_settings and every replica reads at Open; it is
// compared in constant time, and anything else gets 401. The listener is
// no way around the gate: it never serves a client, only replicas that
// already decided their client may have the blob.
//
// # Singletons
//
// Singleton runs a function on one replica at a time under a lease row in
// airlock_cluster_singletons with the same heartbeat: rows rather than
// PostgreSQL advisory locks, because an advisory lock lives on one
// connection, and a pooled connection lost or recycled would drop the lock
// without telling its holder.
//
// The package keeps its own tables, airlock_cluster_*, with their own
// forward-only migrations (airlock_cluster_migrations) applied at Open
// under an advisory lock, in a database the metadata store may share.
package cluster
