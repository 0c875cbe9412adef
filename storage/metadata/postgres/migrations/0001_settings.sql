-- Settings of the store as a whole (its identity, the audit head).
CREATE TABLE airlock_meta_settings (
	name  text PRIMARY KEY,
	value text NOT NULL
);
