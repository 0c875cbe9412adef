package postgres

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify"
)

// The content index: tags, manifest bodies and the links that say what a
// repository may serve, with exactly the semantics of package metadata's
// bbolt [metadata.DB] (see links.go there for what the flags mean). The
// reads a warm pull makes are answered from the cache (cache.go).
//
// Writes lock rows in one order (blob links, manifest links, tags,
// manifest bodies; each set sorted by digest), so that two replicas
// pulling the same content do not deadlock each other. Should a bulk
// change (Reidentify, an evictor's UnlinkImage) meet a pull or an
// access-time write the other way round, PostgreSQL ends one of the two;
// a write here ended so is run again (see write), so neither caller sees
// the deadlock.

// Announcement kinds of the content index; each names its cache entries.
const (
	kindTag          = "tag"      // key "<repo>:<tag>"
	kindManifest     = "manifest" // key "<digest>"
	kindManifestLink = "mlink"    // key "<repo>@<digest>"
	kindBlobLink     = "blob"     // key "<repo>@<digest>"
)

// sep is what neither a repository nor a tag may contain: the bbolt index
// joins them with it, and PostgreSQL's text cannot hold it.
const sep = "\x00"

// maxName bounds a repository name and a tag, in bytes. The bbolt index
// takes keys up to 32 KiB, but PostgreSQL cannot: a notification's payload
// ("tag <repo>:<tag>") must stay under 8000 bytes and a key under a third
// of an index page. Registries' own bounds are far lower (255 for a
// repository, 128 for a tag), so a longer name is a client's attack or
// mistake, refused here with a message rather than by the database with
// its own.
const maxName = 1024

// checkText refuses what PostgreSQL's text cannot hold, a NUL or bytes that
// are not UTF-8, with a message naming what, before any statement runs: the
// database's own error would reach the caller as a failure of the store,
// not of the request.
func checkText(what, s string) error {
	switch {
	case strings.Contains(s, sep):
		return fmt.Errorf("metadata: %s %.80q holds a NUL byte, which PostgreSQL cannot store", what, s)
	case !utf8.ValidString(s):
		return fmt.Errorf("metadata: %s %.80q is not valid UTF-8, which PostgreSQL cannot store", what, s)
	}
	return nil
}

// checkName refuses a repository name or tag the store cannot key
// anything by.
func checkName(what, s string) error {
	if len(s) > maxName {
		return fmt.Errorf("metadata: %s %.40q... is %d bytes, longer than the %d this store keeps", what, s, len(s), maxName)
	}
	return checkText(what, s)
}

func checkRepo(repo string) error {
	if repo == "" || strings.Contains(repo, sep) {
		return fmt.Errorf("metadata: invalid repository name %q: want <upstream>/<repository>", repo)
	}
	return checkName("repository name", repo)
}

func checkTag(repo, tag string) error {
	if err := checkRepo(repo); err != nil {
		return err
	}
	if tag == "" || strings.Contains(tag, sep) {
		return fmt.Errorf("metadata: invalid tag %q in %s", tag, repo)
	}
	return checkName("tag", tag)
}

func checkRef(repo string, d digest.Digest) error {
	if err := checkRepo(repo); err != nil {
		return err
	}
	if err := verify.Check(d); err != nil {
		return fmt.Errorf("metadata: %s: %w", repo, err)
	}
	return nil
}

// changes collects what a write changed, to announce and to drop.
type changes struct {
	kinds, keys []string
}

func (c *changes) add(kind, key string) {
	c.kinds = append(c.kinds, kind)
	c.keys = append(c.keys, key)
}

// write runs fn in a transaction and announces, in it, what fn changed.
// Once the transaction is over it drops those keys from this Store's cache
// at once, committed or not (a commit whose answer was lost may have
// landed); the announcement drops them on the other replicas. A
// transaction PostgreSQL ended for a conflict (a deadlock) is run again,
// fn included, as writeTx does: fn only writes to tx and sets what it
// returns afresh.
//
// The keys are dropped after the transaction is over, not when fn
// returns: a read in between would cache what the commit is replacing.
// An attempt that was run again never committed, so the last attempt's
// keys are the ones to drop.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx, ch *changes) error) error {
	return s.writeWithin(ctx, s.opts.OpTimeout, fn)
}

// writeWithin is write with each attempt bounded by limit rather than the
// store's OpTimeout.
func (s *Store) writeWithin(ctx context.Context, limit time.Duration, fn func(ctx context.Context, tx pgx.Tx, ch *changes) error) error {
	var ch changes
	err := s.writeTxWithin(ctx, limit, func(ctx context.Context, tx pgx.Tx) error {
		ch = changes{}
		if err := fn(ctx, tx, &ch); err != nil {
			return err
		}
		return announce(ctx, tx, ch)
	})
	for i, kind := range ch.kinds {
		s.cache.apply(kind, ch.keys[i])
	}
	return err
}

// announce sends one notification per change, in one statement.
func announce(ctx context.Context, tx pgx.Tx, ch changes) error {
	switch len(ch.keys) {
	case 0:
		return nil
	case 1:
		return notify(ctx, tx, ch.kinds[0], ch.keys[0])
	}
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, k || ' ' || v) FROM unnest($2::text[], $3::text[]) AS c(k, v)",
		Channel, ch.kinds, ch.keys); err != nil {
		return fmt.Errorf("metadata: announcing %d changes: %w", len(ch.keys), err)
	}
	return nil
}

// unavailable wraps a failed query: the database, not the record, is
// missing, and the caller should say so rather than report a miss.
func unavailable(what string, err error) error {
	return fmt.Errorf("metadata: reading %s from PostgreSQL: %w (%w)", what, err, metadata.ErrUnavailable)
}

// Tag returns what tag in repo last resolved to, or an error wrapping
// storage.ErrNotFound. Served from the cache once read.
func (s *Store) Tag(ctx context.Context, repo, tag string) (metadata.TagRecord, error) {
	if err := checkTag(repo, tag); err != nil {
		return metadata.TagRecord{}, err
	}
	if err := ctx.Err(); err != nil {
		return metadata.TagRecord{}, err
	}
	key := tagEntry(repo, tag)
	if v, ok := s.cache.get(key); ok {
		if _, missing := v.(noTag); missing {
			return metadata.TagRecord{}, fmt.Errorf("tag %s:%s: %w", repo, tag, storage.ErrNotFound)
		}
		return v.(metadata.TagRecord), nil
	}
	t := s.cache.ticket(key)
	v, err := s.flights.share(ctx, key, t, func(ctx context.Context) (any, error) {
		var (
			rec metadata.TagRecord
			d   string
		)
		err := s.pool.QueryRow(ctx, "SELECT digest, media_type, size, resolved FROM airlock_meta_tags WHERE repo = $1 AND tag = $2",
			repo, tag).Scan(&d, &rec.MediaType, &rec.Size, &rec.Resolved)
		rec.Digest = digest.Digest(d)
		return rec, err
	})
	if isNoRows(err) {
		// A warm pull asks for tags that are never written: those a
		// client whose Accept list narrows the answer resolves, which
		// the gateway keeps in memory only. Remembering that the row is
		// missing keeps the database out of those pulls; every write of
		// the tag announces it, so the absence is dropped as a record
		// would be.
		s.cache.putMiss(t, key, noTag{})
		return metadata.TagRecord{}, fmt.Errorf("tag %s:%s: %w", repo, tag, storage.ErrNotFound)
	}
	if err != nil {
		return metadata.TagRecord{}, unavailable("tag "+tagName(repo, tag), err)
	}
	rec := v.(metadata.TagRecord)
	s.cache.put(t, key, rec, int64(len(rec.Digest)+len(rec.MediaType)))
	return rec, nil
}

// noTag is cached for a tag the database has no row for.
type noTag struct{}

// PutTag records what tag in repo resolved to. Resolved is kept to the
// microsecond, PostgreSQL's precision.
func (s *Store) PutTag(ctx context.Context, repo, tag string, rec metadata.TagRecord) error {
	if err := checkTag(repo, tag); err != nil {
		return err
	}
	if err := verify.Check(rec.Digest); err != nil {
		return fmt.Errorf("metadata: tag %s:%s: %w", repo, tag, err)
	}
	if err := checkText("media type of tag "+tagName(repo, tag), rec.MediaType); err != nil {
		return err
	}
	return s.write(ctx, func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		_, err := tx.Exec(ctx, `INSERT INTO airlock_meta_tags (repo, tag, digest, media_type, size, resolved)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
				size = excluded.size, resolved = excluded.resolved`,
			repo, tag, string(rec.Digest), rec.MediaType, rec.Size, rec.Resolved)
		if err != nil {
			return fmt.Errorf("metadata: writing tag %s: %w", tagName(repo, tag), err)
		}
		ch.add(kindTag, tagName(repo, tag))
		return nil
	})
}

// Tags returns the tags of repo known locally, sorted bytewise; an unknown
// repository has none and no error. Not cached: it is asked when the
// upstream cannot list them.
func (s *Store) Tags(ctx context.Context, repo string) ([]string, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	rows, _ := s.pool.Query(ctx, "SELECT tag FROM airlock_meta_tags WHERE repo = $1 ORDER BY tag", repo)
	tags, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, unavailable("the tags of "+repo, err)
	}
	if tags == nil {
		tags = []string{}
	}
	return tags, nil
}

// cloneManifest copies rec's body: the cache's is shared and never
// modified, and callers own what they get (an empty body is not nil, as
// with bbolt).
func cloneManifest(rec metadata.ManifestRecord) metadata.ManifestRecord {
	rec.Body = bytes.Clone(rec.Body)
	if rec.Body == nil {
		rec.Body = []byte{}
	}
	return rec
}

func manifestSize(rec metadata.ManifestRecord) int64 {
	return int64(len(rec.Body) + len(rec.MediaType) + len(rec.Digest))
}

// Manifest returns the manifest with digest d, or an error wrapping
// storage.ErrNotFound. Served from the cache once read.
func (s *Store) Manifest(ctx context.Context, d digest.Digest) (metadata.ManifestRecord, error) {
	if err := verify.Check(d); err != nil {
		return metadata.ManifestRecord{}, fmt.Errorf("metadata: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return metadata.ManifestRecord{}, err
	}
	key := manifestEntry(d)
	if v, ok := s.cache.get(key); ok {
		return cloneManifest(v.(metadata.ManifestRecord)), nil
	}
	t := s.cache.ticket(key)
	rec := metadata.ManifestRecord{Digest: d}
	qctx, cancel := s.bounded(ctx)
	defer cancel()
	err := s.pool.QueryRow(qctx, "SELECT media_type, body FROM airlock_meta_manifests WHERE digest = $1", string(d)).
		Scan(&rec.MediaType, &rec.Body)
	if isNoRows(err) {
		return metadata.ManifestRecord{}, fmt.Errorf("manifest %s: %w", d, storage.ErrNotFound)
	}
	if err != nil {
		return metadata.ManifestRecord{}, unavailable("manifest "+string(d), err)
	}
	s.cache.put(t, key, cloneManifest(rec), manifestSize(rec))
	return rec, nil
}

// RepoManifest returns manifest d and repo's link to it, in one query when
// neither is cached. The error wraps storage.ErrNotFound when either is
// missing; the record is returned when only the link is.
func (s *Store) RepoManifest(ctx context.Context, repo string, d digest.Digest) (metadata.ManifestRecord, metadata.Link, error) {
	if err := checkRef(repo, d); err != nil {
		return metadata.ManifestRecord{}, metadata.Link{}, err
	}
	if err := ctx.Err(); err != nil {
		return metadata.ManifestRecord{}, metadata.Link{}, err
	}
	mkey, lkey := manifestEntry(d), manifestLinkEntry(repo, d)
	if v, ok := s.cache.get(mkey); ok {
		rec := cloneManifest(v.(metadata.ManifestRecord))
		l, err := s.ManifestLink(ctx, repo, d)
		return rec, l, err
	}
	mt, lt := s.cache.ticket(mkey), s.cache.ticket(lkey)
	rec := metadata.ManifestRecord{Digest: d}
	var (
		flags     *int16
		size      *int64
		mediaType *string
	)
	qctx, cancel := s.bounded(ctx)
	defer cancel()
	err := s.pool.QueryRow(qctx, `SELECT m.media_type, m.body, l.flags, l.size, l.media_type
		FROM airlock_meta_manifests m
		LEFT JOIN airlock_meta_manifest_links l ON l.repo = $1 AND l.digest = m.digest
		WHERE m.digest = $2`, repo, string(d)).Scan(&rec.MediaType, &rec.Body, &flags, &size, &mediaType)
	if isNoRows(err) {
		return metadata.ManifestRecord{}, metadata.Link{}, fmt.Errorf("manifest %s: %w", d, storage.ErrNotFound)
	}
	if err != nil {
		return metadata.ManifestRecord{}, metadata.Link{}, unavailable("manifest "+ref(repo, d), err)
	}
	s.cache.put(mt, mkey, cloneManifest(rec), manifestSize(rec))
	if flags == nil {
		return rec, metadata.Link{}, fmt.Errorf("manifest link %s: %w", ref(repo, d), storage.ErrNotFound)
	}
	l := metadata.Link{Flags: metadata.LinkFlags(*flags), Size: *size, MediaType: *mediaType}
	s.cache.put(lt, lkey, l, int64(len(l.MediaType)))
	return rec, l, nil
}

// PutManifest stores a manifest and merges link into repo's link of it.
// When link carries Admitted, the blobs given are admitted as AdmitManifest
// would, in the same transaction. The body must hash to rec.Digest and be
// at most metadata.MaxManifestSize bytes.
func (s *Store) PutManifest(ctx context.Context, repo string, rec metadata.ManifestRecord, link metadata.Link, admit ...metadata.BlobLink) error {
	if err := checkRef(repo, rec.Digest); err != nil {
		return err
	}
	if len(rec.Body) > metadata.MaxManifestSize {
		return fmt.Errorf("metadata: manifest %s is %d bytes, over the %d byte limit: %w",
			rec.Digest, len(rec.Body), metadata.MaxManifestSize, verify.ErrTooLarge)
	}
	if err := verify.Bytes(rec.Digest, rec.Body); err != nil {
		return fmt.Errorf("metadata: manifest for %s: %w", repo, err)
	}
	if err := checkText("media type of manifest "+string(rec.Digest), rec.MediaType); err != nil {
		return err
	}
	if err := checkLink(repo, rec.Digest, link); err != nil {
		return err
	}
	if !link.Has(metadata.Admitted) {
		admit = nil
	}
	if err := checkBlobs(repo, admit); err != nil {
		return err
	}
	if link.Size == 0 {
		link.Size = int64(len(rec.Body))
	}
	body := rec.Body
	if body == nil {
		body = []byte{}
	}
	return s.write(ctx, func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		if err := mergeBlobLinks(ctx, tx, repo, admissions(admit), ch); err != nil {
			return err
		}
		if err := mergeManifestLink(ctx, tx, repo, rec.Digest, link, ch); err != nil {
			return err
		}
		// The body is the digest's, so only the media type can differ.
		tag, err := tx.Exec(ctx, `INSERT INTO airlock_meta_manifests AS m (digest, media_type, body) VALUES ($1, $2, $3)
			ON CONFLICT (digest) DO UPDATE SET media_type = excluded.media_type WHERE m.media_type <> excluded.media_type`,
			string(rec.Digest), rec.MediaType, body)
		if err != nil {
			return fmt.Errorf("metadata: writing manifest %s: %w", rec.Digest, err)
		}
		if tag.RowsAffected() > 0 {
			ch.add(kindManifest, string(rec.Digest))
		}
		return nil
	})
}

func checkLink(repo string, d digest.Digest, l metadata.Link) error {
	if l.Size < 0 {
		return fmt.Errorf("metadata: link of %s in %s: negative size %d", d, repo, l.Size)
	}
	return checkText("media type of the link of "+ref(repo, d), l.MediaType)
}

// checkBlobs checks the digests and sizes of blobs to link in repo.
func checkBlobs(repo string, blobs []metadata.BlobLink) error {
	for _, b := range blobs {
		if err := checkRef(repo, b.Digest); err != nil {
			return err
		}
		if b.Size < 0 {
			return fmt.Errorf("metadata: link of %s in %s: negative size %d", b.Digest, repo, b.Size)
		}
	}
	return nil
}

// admissions turns the blobs an admitted manifest lists into link merges:
// Admitted with the declared size. Admission confirms nothing, and a
// declaration never replaces a size already known.
func admissions(blobs []metadata.BlobLink) []metadata.BlobLink {
	out := make([]metadata.BlobLink, len(blobs))
	for i, b := range blobs {
		out[i] = metadata.BlobLink{Digest: b.Digest, Size: b.Size, Flags: metadata.Admitted | (b.Flags &^ metadata.Confirmed)}
	}
	return out
}

// mergeBlobSQL adds flags and a size to a blob link: flags accumulate; a
// size is kept once known unless $5 (the upstream's word) brings another.
// A merge that adds nothing writes nothing and returns no row.
const mergeBlobSQL = `INSERT INTO airlock_meta_blob_links AS l (repo, digest, flags, size) VALUES ($1, $2, $3, $4)
	ON CONFLICT (repo, digest) DO UPDATE SET
		flags = l.flags | excluded.flags,
		size = CASE WHEN excluded.size = 0 OR (l.size <> 0 AND NOT $5::boolean) THEN l.size ELSE excluded.size END
	WHERE l.flags | excluded.flags <> l.flags
		OR NOT (excluded.size = 0 OR (l.size <> 0 AND NOT $5::boolean) OR excluded.size = l.size)
	RETURNING 1`

// mergeBlobLinks merges blobs into repo's links, in one round trip, in
// digest order.
func mergeBlobLinks(ctx context.Context, tx pgx.Tx, repo string, blobs []metadata.BlobLink, ch *changes) error {
	if len(blobs) == 0 {
		return nil
	}
	blobs = slices.Clone(blobs)
	slices.SortStableFunc(blobs, func(a, b metadata.BlobLink) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	batch := &pgx.Batch{}
	for _, b := range blobs {
		batch.Queue(mergeBlobSQL, repo, string(b.Digest), int16(b.Flags), b.Size, b.UpstreamSize)
	}
	br := tx.SendBatch(ctx, batch)
	for _, b := range blobs {
		var one int
		err := br.QueryRow().Scan(&one)
		if isNoRows(err) {
			continue
		}
		if err != nil {
			br.Close()
			return fmt.Errorf("metadata: linking blob %s in %s: %w", b.Digest, repo, err)
		}
		ch.add(kindBlobLink, ref(repo, b.Digest))
	}
	return br.Close()
}

// mergeManifestLink adds l's flags, its size if none is known and its
// media type if set to repo's link of manifest d.
func mergeManifestLink(ctx context.Context, tx pgx.Tx, repo string, d digest.Digest, l metadata.Link, ch *changes) error {
	tag, err := tx.Exec(ctx, `INSERT INTO airlock_meta_manifest_links AS l (repo, digest, flags, size, media_type)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (repo, digest) DO UPDATE SET
			flags = l.flags | excluded.flags,
			size = CASE WHEN excluded.size = 0 OR l.size <> 0 THEN l.size ELSE excluded.size END,
			media_type = CASE WHEN excluded.media_type = '' THEN l.media_type ELSE excluded.media_type END
		WHERE l.flags | excluded.flags <> l.flags
			OR (excluded.size <> 0 AND l.size = 0)
			OR (excluded.media_type <> '' AND excluded.media_type <> l.media_type)`,
		repo, string(d), int16(l.Flags), l.Size, l.MediaType)
	if err != nil {
		return fmt.Errorf("metadata: linking manifest %s in %s: %w", d, repo, err)
	}
	if tag.RowsAffected() > 0 {
		ch.add(kindManifestLink, ref(repo, d))
	}
	return nil
}

// BlobLink returns what repo knows of blob d, or an error wrapping
// storage.ErrNotFound. Served from the cache once read.
func (s *Store) BlobLink(ctx context.Context, repo string, d digest.Digest) (metadata.Link, error) {
	if err := checkRef(repo, d); err != nil {
		return metadata.Link{}, err
	}
	if err := ctx.Err(); err != nil {
		return metadata.Link{}, err
	}
	return s.readLink(ctx, blobLinkEntry(repo, d), "blob link", repo, d, false,
		"SELECT flags, size FROM airlock_meta_blob_links WHERE repo = $1 AND digest = $2")
}

// ManifestLink returns what repo knows of manifest d, or an error wrapping
// storage.ErrNotFound. Served from the cache once read.
func (s *Store) ManifestLink(ctx context.Context, repo string, d digest.Digest) (metadata.Link, error) {
	if err := checkRef(repo, d); err != nil {
		return metadata.Link{}, err
	}
	if err := ctx.Err(); err != nil {
		return metadata.Link{}, err
	}
	return s.readLink(ctx, manifestLinkEntry(repo, d), "manifest link", repo, d, true,
		"SELECT flags, size, media_type FROM airlock_meta_manifest_links WHERE repo = $1 AND digest = $2")
}

// readLink reads a link through the cache. query selects the flags and the
// size of repo@d, and its media type when mediaType is set (a manifest's
// link).
func (s *Store) readLink(ctx context.Context, key, what, repo string, d digest.Digest, mediaType bool, query string) (metadata.Link, error) {
	if v, ok := s.cache.get(key); ok {
		return v.(metadata.Link), nil
	}
	t := s.cache.ticket(key)
	v, err := s.flights.share(ctx, key, t, func(ctx context.Context) (any, error) {
		var (
			flags int16
			l     metadata.Link
		)
		dest := []any{&flags, &l.Size}
		if mediaType {
			dest = append(dest, &l.MediaType)
		}
		err := s.pool.QueryRow(ctx, query, repo, string(d)).Scan(dest...)
		l.Flags = metadata.LinkFlags(flags)
		return l, err
	})
	if isNoRows(err) {
		return metadata.Link{}, fmt.Errorf("%s %s: %w", what, ref(repo, d), storage.ErrNotFound)
	}
	if err != nil {
		return metadata.Link{}, unavailable(what+" "+ref(repo, d), err)
	}
	l := v.(metadata.Link)
	s.cache.put(t, key, l, int64(len(l.MediaType)))
	return l, nil
}

// LinkBlobs adds flags and sizes to repo's links of the given blobs, in one
// transaction. Flags only accumulate; a size, once known, is kept unless
// the new one is the upstream's word (BlobLink.UpstreamSize).
func (s *Store) LinkBlobs(ctx context.Context, repo string, blobs ...metadata.BlobLink) error {
	if err := checkBlobs(repo, blobs); err != nil {
		return err
	}
	if len(blobs) == 0 {
		return nil
	}
	return s.write(ctx, func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		return mergeBlobLinks(ctx, tx, repo, blobs, ch)
	})
}

// LinkManifest adds l's flags (and media type, when set) to repo's link of
// manifest d.
func (s *Store) LinkManifest(ctx context.Context, repo string, d digest.Digest, l metadata.Link) error {
	if err := checkRef(repo, d); err != nil {
		return err
	}
	if err := checkLink(repo, d, l); err != nil {
		return err
	}
	return s.write(ctx, func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		return mergeManifestLink(ctx, tx, repo, d, l, ch)
	})
}

// AdmitManifest records that manifest d passed the gate in repo: each blob
// it lists gets the Admitted flag (with its declared size) and the manifest
// link records that this was done.
func (s *Store) AdmitManifest(ctx context.Context, repo string, d digest.Digest, blobs []metadata.BlobLink) error {
	if err := checkRef(repo, d); err != nil {
		return err
	}
	if err := checkBlobs(repo, blobs); err != nil {
		return err
	}
	return s.write(ctx, func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		if err := mergeBlobLinks(ctx, tx, repo, admissions(blobs), ch); err != nil {
			return err
		}
		return mergeManifestLink(ctx, tx, repo, d, metadata.Link{Flags: metadata.Admitted}, ch)
	})
}

// ManifestLinks returns every manifest linked in repo with its link. An
// unknown repository has none and no error. Not cached: the admin's view
// and withdrawals ask it, never a pull.
func (s *Store) ManifestLinks(ctx context.Context, repo string) (map[digest.Digest]metadata.Link, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	rows, _ := s.pool.Query(ctx, "SELECT digest, flags, size, media_type FROM airlock_meta_manifest_links WHERE repo = $1", repo)
	links := map[digest.Digest]metadata.Link{}
	var (
		d     string
		flags int16
		l     metadata.Link
	)
	_, err := pgx.ForEachRow(rows, []any{&d, &flags, &l.Size, &l.MediaType}, func() error {
		l.Flags = metadata.LinkFlags(flags)
		links[digest.Digest(d)] = l
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: manifests of %s: %w", repo, err)
	}
	return links, nil
}

func checkContent(repo string, d digest.Digest, blobs []digest.Digest) ([]string, error) {
	if err := checkRef(repo, d); err != nil {
		return nil, err
	}
	ds := make([]string, len(blobs))
	for i, b := range blobs {
		if err := checkRef(repo, b); err != nil {
			return nil, err
		}
		ds[i] = string(b)
	}
	return ds, nil
}

// WithdrawManifest takes back what admitting manifest d in repo gave: the
// Admitted flag of its manifest link and of repo's links of blobs, which
// the caller lists because no manifest still servable in repo references
// them. It runs in one transaction. Missing links are ignored; other flags
// and sizes are kept.
func (s *Store) WithdrawManifest(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) error {
	ds, err := checkContent(repo, d, blobs)
	if err != nil {
		return err
	}
	slices.Sort(ds)
	admitted := int16(metadata.Admitted)
	err = s.write(ctx, func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		rows, _ := tx.Query(ctx, `UPDATE airlock_meta_blob_links SET flags = flags & ~$3::smallint
			WHERE repo = $1 AND digest = ANY($2::text[]) AND flags & $3::smallint <> 0 RETURNING digest`, repo, ds, admitted)
		withdrawn, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, b := range withdrawn {
			ch.add(kindBlobLink, ref(repo, digest.Digest(b)))
		}
		tag, err := tx.Exec(ctx, `UPDATE airlock_meta_manifest_links SET flags = flags & ~$3::smallint
			WHERE repo = $1 AND digest = $2 AND flags & $3::smallint <> 0`, repo, string(d), admitted)
		if err != nil {
			return err
		}
		if tag.RowsAffected() > 0 {
			ch.add(kindManifestLink, ref(repo, d))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("metadata: withdrawing %s: %w", ref(repo, d), err)
	}
	return nil
}

// UnlinkImage removes manifest d from repo, in one transaction: its
// manifest link, repo's links of the listed blobs (which the caller found
// no other manifest of repo references), the tags of repo that resolve to
// d, and the access times of all of them in repo. The manifest body goes
// too when no repository links it any more. It returns the blobs of the
// list that no repository links any more, in the list's order, once each:
// the caller deletes them from the blob store.
//
// Access times of those not written yet are forgotten too, so that the next
// write does not bring back what was removed. A replica that links one of
// the orphans while this runs finds the blob gone from the blob store and
// fetches it again, as with the bbolt index.
func (s *Store) UnlinkImage(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) ([]digest.Digest, error) {
	ds, err := checkContent(repo, d, blobs)
	if err != nil {
		return nil, err
	}
	var orphans, gone []digest.Digest
	err = s.write(ctx, func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		var err error
		orphans, gone, err = unlink(ctx, tx, repo, d, ds, ch)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: unlinking %s: %w", ref(repo, d), err)
	}
	s.access.forget(repo, append([]digest.Digest{d}, blobs...), gone)
	return orphans, nil
}

// unlink is UnlinkImage's transaction. It returns the orphans, and the
// digests whose last use it removed (the orphans and the manifest, if its
// body went).
func unlink(ctx context.Context, tx pgx.Tx, repo string, d digest.Digest, blobs []string, ch *changes) (orphans, gone []digest.Digest, err error) {
	sorted := slices.Sorted(slices.Values(blobs))
	rows, _ := tx.Query(ctx, `DELETE FROM airlock_meta_blob_links WHERE repo = $1 AND digest = ANY($2::text[]) RETURNING digest`, repo, sorted)
	unlinkedHere, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, err
	}
	for _, b := range unlinkedHere {
		ch.add(kindBlobLink, ref(repo, digest.Digest(b)))
	}
	tag, err := tx.Exec(ctx, "DELETE FROM airlock_meta_manifest_links WHERE repo = $1 AND digest = $2", repo, string(d))
	if err != nil {
		return nil, nil, err
	}
	if tag.RowsAffected() > 0 {
		ch.add(kindManifestLink, ref(repo, d))
	}
	rows, _ = tx.Query(ctx, "DELETE FROM airlock_meta_tags WHERE repo = $1 AND digest = $2 RETURNING tag", repo, string(d))
	tags, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, err
	}
	for _, t := range tags {
		ch.add(kindTag, tagName(repo, t))
	}
	if _, err := tx.Exec(ctx, "DELETE FROM airlock_meta_access WHERE repo = $1 AND (digest = ANY($2::text[]) OR digest = $3)",
		repo, sorted, string(d)); err != nil {
		return nil, nil, err
	}
	tag, err = tx.Exec(ctx, `DELETE FROM airlock_meta_manifests WHERE digest = $1
		AND NOT EXISTS (SELECT 1 FROM airlock_meta_manifest_links WHERE digest = $1)`, string(d))
	if err != nil {
		return nil, nil, err
	}
	if tag.RowsAffected() > 0 {
		ch.add(kindManifest, string(d))
		gone = append(gone, d)
	}
	rows, _ = tx.Query(ctx, `SELECT b FROM unnest($1::text[]) WITH ORDINALITY AS u(b, i)
		WHERE NOT EXISTS (SELECT 1 FROM airlock_meta_blob_links WHERE digest = u.b) ORDER BY i`, blobs)
	unlinked, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, err
	}
	seen := make(map[string]bool, len(unlinked))
	for _, b := range unlinked {
		if !seen[b] {
			seen[b] = true
			orphans = append(orphans, digest.Digest(b))
		}
	}
	gone = append(gone, orphans...)
	lastUses := make([]string, len(gone))
	for i, g := range gone {
		lastUses[i] = string(g)
	}
	// The orphans are about to leave the store; Reconcile writes their last
	// use again if the caller fails to delete them.
	if _, err := tx.Exec(ctx, "DELETE FROM airlock_meta_last_use WHERE digest = ANY($1::text[])", lastUses); err != nil {
		return nil, nil, err
	}
	return orphans, gone, nil
}
