package postgres

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/opencontainers/go-digest"
)

// The cache, and how stale it may be.
//
// A warm pull asks the index for a tag, a manifest with the repository's
// link to it, and the link of every blob it then reads. The Store answers
// those reads (Tag, RepoManifest, Manifest, ManifestLink, BlobLink) from
// memory after the first time: a warm pull costs no query, only a map
// lookup under a mutex and, for a manifest, a copy of its body (callers own
// what they get). Touch costs no query either; access times are written in
// batches (access.go).
//
// Every write, through any replica, announces the keys it changed on the
// NOTIFY channel [Channel] in its own transaction, so the announcement is
// sent when, and only when, the change commits. Each Store keeps one
// dedicated connection LISTENing on it and drops the entries named; it also
// drops its own entries as soon as its own writes commit. While that
// connection is up, a change made through any replica is out of every
// replica's cache within one notification's delivery, milliseconds.
//
// The bound: a cached answer is served only while the listener has been
// heard from (a notification, or its own heartbeat announced on the
// channel after Staleness/4 without one, and at least every 5 s) within
// the last [Options.Staleness]. When the listener is lost, or deaf (its
// connection answers but its LISTEN hears nothing), silently (a
// partition) or not (PostgreSQL restarting), cached
// answers keep being served for at most Staleness after the last contact,
// so that approved content stays available through a short outage of
// PostgreSQL, and then not at all: every read goes to the database and
// fails if it is down. When the listener connects again the whole cache is
// dropped, since announcements sent meanwhile were missed.
//
// The cache is bounded in entries and in bytes (manifests may be 4 MiB),
// least recently used first out. Answers that found nothing are cached
// only for tags (see [Store.Tag]: a warm pull can ask for a tag that is
// never written), and apart: their keys are the client's choice, so a
// client asking for any tag it likes pushes out only other misses, never
// what warm pulls of stored content need.

const (
	// cacheEntries and cacheBytes bound the cache. Typical manifests are a
	// few KiB, so the entry bound is the one usually reached.
	cacheEntries = 200_000
	// cacheMisses bounds the answers that found nothing.
	cacheMisses = 20_000
	cacheBytes  = 256 << 20
	// entryOverhead is what an entry costs beyond its key and value bytes:
	// the map slot, the list element, the record's fixed fields.
	entryOverhead = 160

	// maxHeartbeat is the longest the listener goes without checking its
	// connection, whatever the staleness.
	maxHeartbeat = 5 * time.Second
	// Reconnection waits grow from minBackoff to maxBackoff.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
	// minSilence is the shortest the listener hears nothing before it
	// starts over on a new connection.
	minSilence = time.Second
	// dialTimeout bounds one attempt to open the listening connection.
	dialTimeout = 10 * time.Second

	// listenerName is the listening connection's application_name, so that
	// an operator (or a test) can find it in pg_stat_activity.
	listenerName = "airlock-listener"

	// kindReset is announced to subscribers when the listener reconnected:
	// announcements were missed, so everything must be reloaded.
	kindReset = "reset"
	// kindUpstream announces that every link and tag of an upstream name
	// changed (Reidentify).
	kindUpstream = "upstream"
	// kindHeartbeat is what a listener announces to itself between
	// announcements (see receive). Every replica hears it; it changes
	// nothing and is not passed to subscribers.
	kindHeartbeat = "heartbeat"
)

// state is the Store's memory: the cache, the listener that keeps it
// current, the subscribers to announcements and the access times not yet
// written.
type state struct {
	cache   *cache
	flights flights

	subMu sync.Mutex
	subs  []func(kind, key string)

	access accessBatch

	cancel    context.CancelFunc
	listening chan struct{} // closed when the listener has returned
	flushing  chan struct{} // closed when the access-time writer has returned
	closeOnce sync.Once
	closeErr  error
}

// start opens the listening connection (so that the cache is valid from
// the first read) and starts the listener and the access-time writer.
func (s *Store) start(ctx context.Context) error {
	s.cache = newCache(s.opts.Staleness, time.Now)
	s.access.init()
	conn, err := s.dialListener(ctx)
	if err != nil {
		return err
	}
	s.cache.confirm(time.Now())
	// Both loops outlive Open's context; stop ends them.
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.listening = make(chan struct{})
	s.flushing = make(chan struct{})
	go s.listen(bg, conn)
	go s.flushLoop(bg, defaultFlushEvery)
	return nil
}

// stop ends the listener and the writer and writes the access times still
// pending. Later calls return the first one's result.
func (s *Store) stop() error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.listening
		<-s.flushing
		s.access.close()
		ctx, cancel := context.WithTimeout(context.Background(), closeFlushTimeout)
		defer cancel()
		s.closeErr = s.flush(ctx)
	})
	return s.closeErr
}

// Subscribe calls fn with every announcement the listener receives, this
// Store's own included: kind is a short word ("tag", "manifest", "mlink",
// "blob", "upstream", and what other tables announce, such as "image"),
// key what changed ("<repo>@<digest>" for an image). After the listener
// reconnects fn gets kind "reset" and key "": announcements may have been
// missed, so whatever fn's owner keeps must be reloaded. fn runs on the
// listener's goroutine, after the cache has dropped the key; it must not
// block, or every replica's changes wait behind it.
func (s *Store) Subscribe(fn func(kind, key string)) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.subs = append(s.subs, fn)
}

func (s *Store) publish(kind, key string) {
	s.subMu.Lock()
	subs := s.subs
	s.subMu.Unlock()
	for _, fn := range subs {
		fn(kind, key)
	}
}

// dialListener opens a connection of its own (not one of the pool's, which
// would be lost to queries) and LISTENs on the channel.
func (s *Store) dialListener(ctx context.Context) (*pgx.Conn, error) {
	// The pool's parse of the DSN, not pgx.ParseConfig's: that one would
	// pass the pool's own settings (pool_max_conns, …) to the server, which
	// refuses them as unknown parameters.
	cfg := s.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = listenerName
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata: connecting to PostgreSQL to listen for changes: %w", err)
	}
	channel := Channel
	if s.opts.listenOn != "" {
		channel = s.opts.listenOn
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("metadata: listening on %s: %w", channel, err)
	}
	return conn, nil
}

// listen applies announcements to the cache until ctx ends, reconnecting
// whenever the connection is lost.
func (s *Store) listen(ctx context.Context, conn *pgx.Conn) {
	defer close(s.listening)
	for {
		err := s.receive(ctx, conn)
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		conn.Close(closeCtx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("metadata: lost the connection that listens for changes; cached answers are served until the staleness bound, then every read goes to PostgreSQL",
			"err", err, "staleness", s.opts.Staleness)
		if conn = s.reconnect(ctx); conn == nil {
			return
		}
		// Whatever was announced while the connection was down is lost:
		// nothing cached before can be trusted.
		s.cache.reset()
		s.cache.confirm(time.Now())
		s.log.Info("metadata: listening for changes again; the cache was emptied")
		s.publish(kindReset, "")
	}
}

// receive applies announcements from conn to the cache until the
// connection fails or ctx ends. Between announcements it sends a
// heartbeat through the channel itself, so that a connection lost
// without a word (a partition) is noticed within a heartbeat and the
// cache's bound runs from the last contact.
//
// Contact is only ever an announcement heard, the heartbeat's included,
// never a ping's answer: a connection can answer while its LISTEN hears
// nothing (behind a connection pooler in transaction mode, the LISTEN ran
// on a server connection since given to another client), and a cache
// confirmed by pings would then be served forever while other replicas'
// changes never reached it. Hearing nothing for Staleness, not even its
// own heartbeats, the listener starts over on a new connection.
func (s *Store) receive(ctx context.Context, conn *pgx.Conn) error {
	beat := heartbeat(s.opts.Staleness)
	heard := time.Now()
	for {
		wctx, cancel := context.WithTimeout(ctx, beat)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil && n == nil:
			continue
		case err == nil:
			heard = time.Now()
			s.cache.confirm(heard)
			s.quiet.answered()
			kind, key, _ := strings.Cut(n.Payload, " ")
			if kind == kindHeartbeat {
				continue
			}
			s.cache.apply(kind, key)
			s.publish(kind, key)
			continue
		case !pgconn.Timeout(err) || conn.IsClosed():
			return err
		}
		// Starting over is only an attempt to recover (the cache's bound
		// runs from the last contact whatever happens here), so it waits
		// for a few heartbeats to go unheard however small the bound.
		if silent := time.Since(heard); silent >= max(s.opts.Staleness, minSilence) {
			return fmt.Errorf("heard nothing on %s for %v, not even this listener's own heartbeats: if a connection pooler in transaction mode stands between airlock and PostgreSQL, give airlock a session-mode connection", Channel, silent.Round(time.Millisecond))
		}
		// Given as long as the silence allowed, not a beat: a loaded
		// server may take longer than 10 ms to answer, and that is no
		// reason to start over.
		pctx, cancel := context.WithTimeout(ctx, max(beat, minSilence))
		_, err = conn.Exec(pctx, "SELECT pg_notify($1, $2)", Channel, kindHeartbeat)
		cancel()
		if err != nil {
			return fmt.Errorf("sending a heartbeat: %w", err)
		}
	}
}

// reconnect dials until it succeeds or ctx ends (nil), waiting longer
// after each failure.
func (s *Store) reconnect(ctx context.Context) *pgx.Conn {
	wait := minBackoff
	expired := false
	for {
		conn, err := s.dialListener(ctx)
		if err == nil {
			return conn
		}
		if !expired && !s.cache.valid(time.Now()) {
			expired = true
			s.log.Error("metadata: still no connection to listen for changes; cached answers expired and every read goes to PostgreSQL",
				"err", err)
		}
		// Jitter, so that replicas that lost PostgreSQL together do not
		// knock on it together.
		d := wait/2 + rand.N(wait/2+1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		wait = min(2*wait, maxBackoff)
	}
}

func heartbeat(staleness time.Duration) time.Duration {
	return min(max(staleness/4, 10*time.Millisecond), maxHeartbeat)
}

// Cache keys are the announcements' payloads, "<kind> <key>", so that an
// announcement names the entry it drops without parsing; but for a tag
// holding a colon. "<repo>:<tag>" is then ambiguous (repo "hub/x" tag
// "a:b" and repo "hub/x:a" tag "b" read alike, and the store refuses only
// NUL in names), so such a tag's entry joins repo and tag with a NUL
// instead, which no name holds, and its announcement drops every entry
// the payload may name (see cache.apply). Digests hold no '@', so
// "<repo>@<digest>" is never ambiguous.
func tagEntry(repo, tag string) string {
	if strings.Contains(tag, ":") {
		return "tag " + repo + sep + tag
	}
	return "tag " + tagName(repo, tag)
}

func manifestEntry(d digest.Digest) string                  { return "manifest " + string(d) }
func manifestLinkEntry(repo string, d digest.Digest) string { return "mlink " + ref(repo, d) }
func blobLinkEntry(repo string, d digest.Digest) string     { return "blob " + ref(repo, d) }

func tagName(repo, tag string) string         { return repo + ":" + tag }
func ref(repo string, d digest.Digest) string { return repo + "@" + string(d) }

// cache is an LRU map from entry keys to records, valid while the listener
// has been heard from within the staleness bound.
type cache struct {
	staleness time.Duration
	now       func() time.Time
	seed      maphash.Seed
	// maxEntries and maxBytes bound the cache (cacheEntries, cacheBytes).
	maxEntries int
	maxBytes   int64
	maxMisses  int

	mu      sync.Mutex
	entries map[string]*list.Element
	lru     list.List // of *entry, most recent first
	misses  list.List // of *entry with miss set, most recent first
	bytes   int64
	// lastContact is when the listener was last heard from.
	lastContact time.Time
	// epoch and gens order fills against drops: a fill whose query began
	// before a drop of its key (or of everything) must not store what the
	// query read. See ticket.
	epoch uint64
	gens  [256]uint64
}

type entry struct {
	key  string
	val  any
	size int64
	miss bool // on misses, not lru, and not counted in bytes
}

func newCache(staleness time.Duration, now func() time.Time) *cache {
	return &cache{staleness: staleness, now: now, seed: maphash.MakeSeed(), entries: map[string]*list.Element{},
		maxEntries: cacheEntries, maxBytes: cacheBytes, maxMisses: cacheMisses}
}

// validLocked says whether cached answers may be served at now.
func (c *cache) validLocked(now time.Time) bool {
	return now.Sub(c.lastContact) < c.staleness
}

func (c *cache) valid(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.validLocked(now)
}

// get returns the record cached under key, if it may be served.
func (c *cache) get(key string) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.validLocked(c.now()) {
		c.clearLocked()
		return nil, false
	}
	el, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*entry)
	if e.miss {
		c.misses.MoveToFront(el)
	} else {
		c.lru.MoveToFront(el)
	}
	return e.val, true
}

// A ticket is taken before the query that fills key: put stores the result
// only if key was not dropped in between. Otherwise a read that began
// before another replica's change, and finished after its announcement
// dropped the key, would cache the old value until the next change.
type ticket struct {
	epoch, gen uint64
	shard      int
}

func (c *cache) shard(key string) int {
	return int(maphash.String(c.seed, key) % uint64(len(c.gens)))
}

func (c *cache) ticket(key string) ticket {
	sh := c.shard(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	return ticket{c.epoch, c.gens[sh], sh}
}

// put stores val (of size bytes beyond the key) under key, unless key was
// dropped since t was taken or the cache may not be served.
func (c *cache) put(t ticket, key string, val any, size int64) {
	size += int64(len(key)) + entryOverhead
	if size > c.maxBytes/16 {
		return // one entry never takes a large share of the cache
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.claimLocked(t, key) {
		return
	}
	c.entries[key] = c.lru.PushFront(&entry{key: key, val: val, size: size})
	c.bytes += size
	for c.lru.Len() > c.maxEntries || c.bytes > c.maxBytes {
		c.removeLocked(c.lru.Back())
	}
}

// putMiss records under key, as put would, that the database has nothing
// for it: get then returns val.
func (c *cache) putMiss(t ticket, key string, val any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.claimLocked(t, key) {
		return
	}
	c.entries[key] = c.misses.PushFront(&entry{key: key, val: val, miss: true})
	for c.misses.Len() > c.maxMisses {
		c.removeLocked(c.misses.Back())
	}
}

// claimLocked reports whether what was read under ticket t may be stored
// under key, and makes room for it: not if key was dropped since t was
// taken, or if the cache may not be served.
func (c *cache) claimLocked(t ticket, key string) bool {
	if t.epoch != c.epoch || t.gen != c.gens[t.shard] || !c.validLocked(c.now()) {
		return false
	}
	if el, ok := c.entries[key]; ok {
		c.removeLocked(el)
	}
	return true
}

func (c *cache) removeLocked(el *list.Element) {
	e := el.Value.(*entry)
	if e.miss {
		c.misses.Remove(el)
	} else {
		c.lru.Remove(el)
		c.bytes -= e.size
	}
	delete(c.entries, e.key)
}

// drop removes the entries of keys and fails the fills of those keys in
// flight.
func (c *cache) drop(keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, key := range keys {
		c.gens[c.shard(key)]++
		if el, ok := c.entries[key]; ok {
			c.removeLocked(el)
		}
	}
}

// apply drops what an announcement names.
func (c *cache) apply(kind, key string) {
	switch kind {
	case kindUpstream:
		c.dropUpstream(key)
	case kindTag:
		// The tag is what follows the last colon, or (when it holds
		// colons itself) what follows any other: drop each reading.
		keys := []string{kind + " " + key}
		for i := range len(key) {
			if key[i] == ':' && strings.Contains(key[i+1:], ":") {
				keys = append(keys, tagEntry(key[:i], key[i+1:]))
			}
		}
		c.drop(keys...)
	default:
		// Kinds the cache holds nothing of ("image") drop nothing.
		c.drop(kind + " " + key)
	}
}

// dropUpstream removes every tag and link of the upstream name's
// repositories.
func (c *cache) dropUpstream(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	prefix := name + "/"
	for key, el := range c.entries {
		_, rest, _ := strings.Cut(key, " ")
		if strings.HasPrefix(rest, prefix) && !strings.HasPrefix(key, "manifest ") {
			c.removeLocked(el)
		}
	}
}

// reset empties the cache and fails every fill in flight.
func (c *cache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
}

func (c *cache) clearLocked() {
	c.epoch++
	if len(c.entries) == 0 {
		return
	}
	c.entries = map[string]*list.Element{}
	c.lru.Init()
	c.misses.Init()
	c.bytes = 0
}

// confirm records that the listener was heard from at now. When it is
// lost, nothing confirms any more and the entries expire at the staleness
// bound from the last contact.
func (c *cache) confirm(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastContact = now
}

// len reports the number of entries and their bytes.
func (c *cache) len() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}

// isNoRows reports whether err is the database saying a row is missing.
func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
