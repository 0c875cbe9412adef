-- What the replicas of one airlock share beyond the metadata: the secret
-- their peer listeners accept, the leases on running fills and the
-- leases on cluster-wide singletons.
CREATE TABLE airlock_cluster_settings (
	name  text PRIMARY KEY,
	value text NOT NULL
);

-- One row per blob being fetched from an upstream somewhere in the
-- cluster, or fetched in the last hour. A row whose expires has passed
-- belongs to no one: its owner gave it up at the fill's end, or stopped
-- renewing it (died, or lost the database).
CREATE TABLE airlock_cluster_fills (
	upstream  text NOT NULL,
	digest    text NOT NULL,
	owner     text NOT NULL,
	advertise text NOT NULL,
	expires   timestamptz NOT NULL,
	PRIMARY KEY (upstream, digest)
);

CREATE TABLE airlock_cluster_singletons (
	name    text PRIMARY KEY,
	owner   text NOT NULL,
	expires timestamptz NOT NULL
);
