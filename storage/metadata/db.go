package metadata

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/airlock-registry/airlock/storage"
)

// schemaVersion is the layout this code reads and writes. Bump it, and add
// a migration, whenever a bucket or an encoding changes incompatibly.
const schemaVersion = 2

var (
	bucketMeta          = []byte("meta")
	bucketTags          = []byte("tags")          // repo \x00 tag     -> tag record (JSON)
	bucketManifests     = []byte("manifests")     // digest            -> manifest record (binary)
	bucketBlobLinks     = []byte("bloblinks")     // repo \x00 digest  -> link (links.go)
	bucketManifestLinks = []byte("manifestlinks") // repo \x00 digest  -> link (links.go)
	bucketLegacyLinks   = []byte("links")         // schema 1: repo \x00 digest -> size (uvarint)
	bucketAccess        = []byte("access")        // repo \x00 digest  -> unix nanoseconds (8 bytes)
	bucketLegacyStates  = []byte("states")        // before images: repo \x00 digest -> state record (JSON); dropped at open
	bucketLastUse       = []byte("lastuse")       // digest            -> unix nanoseconds (8 bytes), latest in any repo
	bucketImages        = []byte("images")        // repo \x00 digest  -> Image (JSON)
	bucketAudit         = []byte("audit")         // seq (8 bytes, big endian) -> AuditRecord (JSON)
	bucketOutbox        = []byte("outbox")        // seq (8 bytes, big endian) -> Delivery (JSON)

	keySchema    = []byte("schema")
	keyStoreID   = []byte("storeid")   // random identity of this file, prefixes event IDs
	keyAuditHead = []byte("audithead") // seq (8 bytes, big endian) then the hash of the last audit record

	dataBuckets = [][]byte{bucketTags, bucketManifests, bucketBlobLinks, bucketManifestLinks, bucketAccess, bucketLastUse,
		bucketImages, bucketAudit, bucketOutbox}
)

const (
	lockTimeout       = 5 * time.Second
	defaultFlushEvery = 5 * time.Second
)

// DB is the bbolt metadata index. It is safe for concurrent use.
type DB struct {
	bolt *bolt.DB
	// id is the store's identity (see keyStoreID), read once at open.
	id string

	mu      sync.Mutex
	pending map[string]int64 // access key -> unix nanoseconds, not yet written
	// pendingUse is pending folded by digest across repositories: the
	// latest use of each blob, not yet written to bucketLastUse.
	pendingUse map[digest.Digest]int64
	closed     bool
	// readOnly is set by OpenReadOnly: Touch records nothing.
	readOnly bool

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Open opens or creates the index at path, creating its directory if
// needed, and starts the background loop that writes access times.
func Open(path string) (*DB, error) {
	return open(path, defaultFlushEvery)
}

func open(path string, flushEvery time.Duration) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("metadata: creating directory for %s: %w", path, err)
	}
	bdb, err := openBolt(path, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return nil, err
	}
	// A lone writer in a Batch waits MaxBatchDelay before its commit; the
	// default 10ms would sit on the cold path of every pull.
	bdb.MaxBatchDelay = time.Millisecond
	if err := bdb.Update(initSchema); err != nil {
		bdb.Close()
		return nil, fmt.Errorf("metadata: %s: %w", path, err)
	}
	var id string
	if err := bdb.View(func(tx *bolt.Tx) error { id = string(tx.Bucket(bucketMeta).Get(keyStoreID)); return nil }); err != nil {
		bdb.Close()
		return nil, fmt.Errorf("metadata: %s: %w", path, err)
	}
	db := &DB{
		bolt:       bdb,
		id:         id,
		pending:    make(map[string]int64),
		pendingUse: make(map[digest.Digest]int64),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	go db.flushLoop(flushEvery)
	return db, nil
}

func openBolt(path string, o *bolt.Options) (*bolt.DB, error) {
	bdb, err := bolt.Open(path, 0o600, o)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("metadata: %s is locked by another process (is another airlock running on this data directory?): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("metadata: opening %s: %w", path, err)
	}
	return bdb, nil
}

// OpenReadOnly opens an existing index for reading only, for tools that
// inspect a stopped store (airlock audit verify --data DIR). It shares the
// file lock with other readers but not with a running airlock, which holds
// it exclusively: while one runs, OpenReadOnly fails after five seconds
// saying the file is locked. It refuses a file this release would have to
// upgrade first. Touch is ignored and every write fails.
func OpenReadOnly(path string) (*DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("metadata: no index at %s (is that the data directory?): %w", path, err)
	}
	bdb, err := openBolt(path, &bolt.Options{Timeout: lockTimeout, ReadOnly: true})
	if err != nil {
		return nil, err
	}
	var id string
	err = bdb.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil || string(meta.Get(keySchema)) != strconv.Itoa(schemaVersion) {
			return errors.New("it was written by another airlock release: open it with that release, or start this one on it once to upgrade it")
		}
		for _, name := range dataBuckets {
			if tx.Bucket(name) == nil {
				return fmt.Errorf("it has no %s bucket yet: start airlock on it once to upgrade it", name)
			}
		}
		id = string(meta.Get(keyStoreID))
		return nil
	})
	if err != nil {
		bdb.Close()
		return nil, fmt.Errorf("metadata: %s: %w", path, err)
	}
	db := &DB{
		bolt:       bdb,
		id:         id,
		readOnly:   true,
		pending:    make(map[string]int64),
		pendingUse: make(map[digest.Digest]int64),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	close(db.done) // no flush loop: there is nothing to write
	return db, nil
}

// initSchema creates the buckets of a new file, or checks the version of an
// existing one and adds the buckets it lacks.
//
// A bucket added without a change to existing encodings does not need a
// new version: a file written before it existed simply gets it here, and
// stays readable by the release that wrote it.
func initSchema(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	migrate := false
	if v := meta.Get(keySchema); v != nil {
		got, err := strconv.Atoi(string(v))
		switch {
		case err == nil && got == 1:
			// Schema 1 differs only in its links; see migrateLinks.
			migrate = true
		case err != nil || got != schemaVersion:
			return fmt.Errorf("schema version %q, but this airlock reads versions 1 and %d; use the matching airlock release or migrate the file", v, schemaVersion)
		}
	}
	if err := meta.Put(keySchema, []byte(strconv.Itoa(schemaVersion))); err != nil {
		return err
	}
	backfill := tx.Bucket(bucketLastUse) == nil && tx.Bucket(bucketAccess) != nil
	for _, name := range dataBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	if err := ensureStoreID(meta); err != nil {
		return err
	}
	// The states bucket held the gate's decisions before images did; no
	// release wrote it, so there is nothing to carry over.
	if tx.Bucket(bucketLegacyStates) != nil {
		if err := tx.DeleteBucket(bucketLegacyStates); err != nil {
			return err
		}
	}
	if migrate {
		if err := migrateLinks(tx); err != nil {
			return fmt.Errorf("migrating links from schema 1: %w", err)
		}
	}
	if backfill {
		return backfillLastUse(tx)
	}
	return nil
}

// ensureStoreID gives a file its identity the first time it is opened.
// Event IDs are "<id>-<outbox seq>", so that two stores (a restored backup
// beside a new file, two replicas) never send two events under one ID.
func ensureStoreID(meta *bolt.Bucket) error {
	if len(meta.Get(keyStoreID)) > 0 {
		return nil
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("creating the store identity: %w", err)
	}
	return meta.Put(keyStoreID, []byte(hex.EncodeToString(b[:])))
}

// ID returns the store's identity, a random string created with the file.
func (db *DB) ID() string { return db.id }

// Close writes pending access times, stops the background loop and closes
// the file. Later calls return the first call's result.
func (db *DB) Close() error {
	db.closeOnce.Do(func() {
		close(db.stop)
		<-db.done
		db.mu.Lock()
		db.closed = true
		db.mu.Unlock()
		flushErr := db.flush()
		db.closeErr = errors.Join(flushErr, db.bolt.Close())
	})
	return db.closeErr
}

// view runs a read transaction unless ctx is already done. bbolt cannot
// interrupt a transaction, so the context is honoured at the boundary.
func (db *DB) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return db.bolt.View(fn)
}

func (db *DB) update(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// The index lives on the cache volume: a full one must read as
	// storage.ErrNoSpace, which callers survive by not recording.
	return storage.MarkNoSpace(db.bolt.Update(fn))
}

// batch is for writes that many goroutines issue at once (a pull links
// every layer): bbolt coalesces them into one commit and one fsync. fn may
// run more than once, so it must be idempotent.
func (db *DB) batch(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return storage.MarkNoSpace(db.bolt.Batch(fn))
}
