// Package scanner finds the vulnerabilities of the images airlock serves.
// It runs claircore as a library: libindex indexes the packages in each
// layer, read from airlock's own blob store (nothing is downloaded twice
// and nothing is asked of the network), and libvuln matches them against
// vulnerability data that claircore's updaters fetch or `airlock vulndb
// import` loads. Both keep their state in PostgreSQL, and so does the scan
// queue: a scan survives a restart, and replicas sharing the database never
// scan the same manifest twice.
//
// A scan depends on the manifest digest only. Its result reaches the gate
// through Options.OnResult, which decides the image under its policies;
// when vulnerability data changes, the manifests it affects are matched
// again and their new results reported the same way. OnResult fires only
// in the process that did the work, and not at all if it stops between
// recording a result and reporting it: a gate reads what it may have
// missed (another replica's scans and re-checks) with Scans.
//
// # Offline
//
// Indexing never touches the network. The indexer's HTTP client refuses
// every request (counted in airlock_scanner_indexer_requests_refused_total
// and logged, should a claircore scanner ever try); Java's Maven lookup is
// disabled, so a jar is named from its own metadata; Red Hat's mapping
// files are read from config.Scanner.RHEL, or are empty ones airlock writes
// into the work directory (RHEL images without content manifests then
// match no repository-scoped advisory). Layers come from Options.Content,
// compressed as stored; gzip, zstd and plain tar are told apart by their
// first bytes, checked against their digest, and uncompressed into an
// unlinked file for as long as claircore reads them. The layers of one
// manifest may expand to 1 GiB in all, or past that to 64 times their
// compressed size: layers that expand further are refused as a
// decompression bomb, and the scan fails.
//
// Vulnerability data comes from two places. With config.Scanner.Updaters.Sets
// empty, only from Import (`airlock vulndb import`): claircore's
// updater-export format, checked line by line before anything is loaded.
// With sets named, claircore's updaters also run on Updaters.Interval
// through Options.Client, their feed URLs overridable per updater in
// Updaters.Config (as Clair's updaters.config). A failed update keeps the
// data of the last good one; it is logged at Warn and counted in
// airlock_scanner_updates_total{result="failed"}.
//
// # Findings and severities
//
// A finding is one vulnerability of one installed package. Its ID is the
// vulnerability's name when that is a CVE id, else the one CVE id its name
// and links mention, else the advisory's own id (DSA-, RHSA-, GHSA-).
// Severity is claircore's normalised severity; SourceSeverity is what the
// source said (Debian's urgency, Red Hat's impact). Sources that rate
// nothing (Alpine's secdb) give SeverityUnknown: the scanner reports it as
// such, and policy counts it as the policy's unknownSeverity (medium by
// default), so such findings are neither waved through by a strict policy
// nor drown a `high` one.
//
// # Queue
//
// A job is a manifest digest, whatever repository asked: Enqueue of a
// digest already done returns its result. Workers claim jobs with SELECT …
// FOR UPDATE SKIP LOCKED and hold them by a lease (2 minutes, renewed every
// 20 seconds); a job whose lease ran out, its process gone, is claimed
// again, and a worker that lost its lease drops its result. A failed
// attempt is retried after a doubling delay (10 seconds up to 10 minutes)
// until config.Scanner.Attempts, then recorded failed; Rescan starts over.
// An image index, or a manifest with no filesystem layers (a Helm chart, a
// signature), is done at once with a Note and no findings: each platform
// manifest of an index is scanned on its own. What counts as a filesystem
// layer is what a container runtime would unpack, whatever the manifest's
// or the config's media type claims: every layer typed under the OCI
// layer or Docker rootfs prefixes (non-distributable ones included) is
// scanned, unless the config is an artifact's empty "{}". A Docker schema
// 1 manifest fails its scan: its layers cannot be told from an image's.
//
// # Re-check
//
// The scanner remembers the newest update operation of each updater it
// re-checked against. Every 30 seconds, on an import's notification and
// after each updater run, it compares them with claircore's latest: for
// an updater whose data changed, claircore's update diff gives the
// vulnerabilities added and removed, and libindex's affected-manifest query
// the scanned manifests they touch (every scanned manifest when there is no
// earlier operation to diff against). Those are matched again from their
// stored index reports (no layer is read again) and each new result is
// reported through OnResult with the new Data. One replica re-checks at a
// time.
//
// # Database
//
// Besides claircore's own tables (its migrations run at Open), airlock adds:
//
//   - airlock_scan_jobs: the queue and its results, one row per manifest
//     digest (state, attempts, timing, lease, the last result as JSON);
//   - airlock_scan_data: per updater, the update operation last
//     re-checked against;
//   - airlock_scan_migrations: the versions of the two above, applied under
//     an advisory lock.
//
// claircore logs through log/slog's default logger; the program decides
// where that goes.
package scanner
