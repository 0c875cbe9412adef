-- The content index: what package metadata's bbolt buckets tags, manifests,
-- bloblinks, manifestlinks, access and lastuse hold. Names and digests are
-- compared bytewise (COLLATE "C"), as bbolt's keys are, so listings come
-- out in the same order and a repository's prefix is an index range.

-- What a tag last resolved to upstream.
CREATE TABLE airlock_meta_tags (
	repo       text COLLATE "C" NOT NULL,
	tag        text COLLATE "C" NOT NULL,
	digest     text NOT NULL,
	media_type text NOT NULL DEFAULT '',
	size       bigint NOT NULL DEFAULT 0,
	resolved   timestamptz NOT NULL,
	PRIMARY KEY (repo, tag)
);
-- UnlinkImage removes the tags of a repository that name a manifest.
CREATE INDEX airlock_meta_tags_digest ON airlock_meta_tags (repo, digest);

-- Manifest bodies, once for every repository; verified against digest and
-- at most 4 MiB before they are written.
CREATE TABLE airlock_meta_manifests (
	digest     text COLLATE "C" PRIMARY KEY,
	media_type text NOT NULL DEFAULT '',
	body       bytea NOT NULL
);

-- What a repository knows of a manifest or a blob (metadata.Link): flags
-- (1 Confirmed, 2 Admitted) only accumulate except through withdrawal;
-- size 0 means unknown.
CREATE TABLE airlock_meta_manifest_links (
	repo       text COLLATE "C" NOT NULL,
	digest     text COLLATE "C" NOT NULL,
	flags      smallint NOT NULL DEFAULT 0,
	size       bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
	media_type text NOT NULL DEFAULT '',
	PRIMARY KEY (repo, digest)
);
-- Whether any repository still links a digest (UnlinkImage).
CREATE INDEX airlock_meta_manifest_links_digest ON airlock_meta_manifest_links (digest);

CREATE TABLE airlock_meta_blob_links (
	repo   text COLLATE "C" NOT NULL,
	digest text COLLATE "C" NOT NULL,
	flags  smallint NOT NULL DEFAULT 0,
	size   bigint NOT NULL DEFAULT 0 CHECK (size >= 0),
	PRIMARY KEY (repo, digest)
);
CREATE INDEX airlock_meta_blob_links_digest ON airlock_meta_blob_links (digest);

-- Last use of content in one repository, and anywhere, in Unix
-- nanoseconds: the latest any replica recorded (writes keep the greater).
CREATE TABLE airlock_meta_access (
	repo   text COLLATE "C" NOT NULL,
	digest text COLLATE "C" NOT NULL,
	at     bigint NOT NULL,
	PRIMARY KEY (repo, digest)
);
CREATE TABLE airlock_meta_last_use (
	digest text COLLATE "C" PRIMARY KEY,
	at     bigint NOT NULL
);

-- The identity (URL) each upstream name was last seen with (Reidentify).
CREATE TABLE airlock_meta_upstreams (
	name     text COLLATE "C" PRIMARY KEY,
	identity text NOT NULL
);
