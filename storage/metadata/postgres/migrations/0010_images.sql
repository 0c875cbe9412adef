-- Image states, the audit log and the alert outbox: metadata.ImageStore.
--
-- Records are kept as the JSON the bbolt store writes (text, not jsonb:
-- jsonb refuses a \u0000 a reason may carry, and the audit hash is over the
-- exact record), with the columns that queries select on beside them.
-- Keys are compared bytewise (COLLATE "C") so that listings come out in
-- the order bbolt's keys do, whatever the database's locale.

CREATE TABLE airlock_meta_images (
	repository text COLLATE "C" NOT NULL,
	digest     text COLLATE "C" NOT NULL,
	state      text NOT NULL,
	record     text NOT NULL,
	PRIMARY KEY (repository, digest)
);

CREATE TABLE airlock_meta_audit (
	seq    bigint PRIMARY KEY,
	record text NOT NULL
);

-- The audit head: the seq and hash of the last record. Its one row is
-- locked by every transaction that appends, so appends are serial across
-- replicas and seqs follow commit order without gaps (a sequence would
-- leave a gap for every rolled-back transaction).
CREATE TABLE airlock_meta_audit_head (
	one  boolean PRIMARY KEY DEFAULT true CHECK (one),
	seq  bigint NOT NULL,
	hash text NOT NULL
);
INSERT INTO airlock_meta_audit_head (seq, hash) VALUES (0, '');

-- Outbox seqs only grow: a delivered seq is never handed out again, so
-- event IDs ("<store id>-<seq>") never repeat.
CREATE SEQUENCE airlock_meta_outbox_seq AS bigint;

-- next_attempt is Unix nanoseconds, to compare at the precision the
-- callers' times have. claimer and claimed_until say which replica's
-- sender holds the delivery and until when (database time): another
-- replica's sender leaves it alone meanwhile.
CREATE TABLE airlock_meta_outbox (
	seq           bigint PRIMARY KEY,
	target        text NOT NULL,
	next_attempt  bigint NOT NULL,
	record        text NOT NULL,
	claimer       text,
	claimed_until timestamptz
);
CREATE INDEX airlock_meta_outbox_due ON airlock_meta_outbox (next_attempt);
