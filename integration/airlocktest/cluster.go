package airlocktest

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// Shared is what the replicas of one cluster have in common: the blob
// store and the metadata database. Each replica keeps its own listeners,
// its own peer listener and its own storage.path (spools, local state).
type Shared struct {
	// Storage is the storage section's driver and its parameters, such as
	// driver s3 and a bucket's endpoint and keys. Empty Driver keeps each
	// replica on its own filesystem store, which is one store only with
	// SharedDir.
	Storage Storage
	// SharedDir, with an empty Storage.Driver, makes every replica keep
	// its blobs in this one directory (storage.parameters.rootdirectory)
	// and sets cluster.sharedFilesystem, which says the directory is the
	// same for all of them.
	SharedDir string
	// DSN is metadata.dsn: the PostgreSQL database of every replica.
	DSN string
	// Staleness is metadata.staleness, how long a replica serves what it
	// holds in memory without hearing from the database; empty leaves
	// airlock's default.
	Staleness string
}

// Storage is a storage section's driver and parameters, in airlock's YAML
// terms.
type Storage struct {
	Driver     string         `yaml:"driver"`
	Parameters map[string]any `yaml:"parameters,omitempty"`
}

// Replica is one airlock of a cluster: an Airlock whose configuration
// also names the shared store, the shared database and its peer listener.
type Replica struct {
	*Airlock
	// PeerURL is cluster.advertise, where the other replicas reach this
	// one's peer listener, "http://127.0.0.1:PORT".
	PeerURL string

	shared Shared
}

// StartCluster starts n replicas of cfg on shared, all at once (they
// apply the database's migrations together, which the store orders with
// a lock), and waits until each answers /readyz. Cleanup stops them all.
func (b *Binary) StartCluster(tb testing.TB, n int, cfg Config, shared Shared) []*Replica {
	tb.Helper()
	rs := make([]*Replica, n)
	for i := range rs {
		rs[i] = b.replica(tb, cfg, shared)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() { errs[i] = r.start(tb.Context()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("replica %d: %v", i+1, err)
		}
	}
	return rs
}

// StartReplica starts one replica of cfg on shared, as StartCluster does
// for each of its replicas.
func (b *Binary) StartReplica(tb testing.TB, cfg Config, shared Shared) *Replica {
	tb.Helper()
	r := b.replica(tb, cfg, shared)
	if err := r.start(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	return r
}

// replica prepares a replica's addresses, directory and configuration
// file, and the cleanup that stops it, as Start does for one airlock.
func (b *Binary) replica(tb testing.TB, cfg Config, shared Shared) *Replica {
	tb.Helper()
	dir := tb.TempDir()
	a := &Airlock{
		DataDir:    filepath.Join(dir, "data"),
		ConfigPath: filepath.Join(dir, "airlock.yaml"),
		bin:        b.Path,
		env:        cfg.Env,
		tb:         tb,
		log:        &logBook{},
	}
	regAddr, adminAddr, peerAddr := freeAddr(tb), freeAddr(tb), freeAddr(tb)
	a.URL, a.Host, a.AdminURL = "http://"+regAddr, regAddr, "http://"+adminAddr
	r := &Replica{Airlock: a, PeerURL: "http://" + peerAddr, shared: shared}
	r.writeConfig(tb, cfg)
	tb.Cleanup(func() {
		if err := a.Stop(); err != nil {
			tb.Errorf("stop replica %s: %v", a.URL, err)
		}
		if races := a.log.matching("WARNING: DATA RACE"); len(races) > 0 {
			tb.Errorf("replica %s reported %d data races; see its log", a.URL, len(races))
		}
		if tb.Failed() {
			doc, _ := os.ReadFile(a.ConfigPath)
			tb.Logf("replica %s (peer %s) config:\n%s\nits log (last lines):\n%s", a.URL, r.PeerURL, doc, a.log.tail(60))
		}
	})
	return r
}

// writeConfig writes cfg as Airlock.writeConfig does and adds the
// sections that make the process a replica: the shared storage, the
// metadata database and the cluster's peer listener.
func (r *Replica) writeConfig(tb testing.TB, cfg Config) {
	tb.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(r.Airlock.writeConfig(tb, cfg), &doc); err != nil {
		tb.Fatalf("decode the replica's configuration: %v", err)
	}
	sh := r.shared
	st, _ := doc["storage"].(map[string]any)
	if st == nil {
		tb.Fatal("the airlock configuration has no storage section")
	}
	cluster := map[string]any{
		"advertise": r.PeerURL,
		"listen":    strings.TrimPrefix(r.PeerURL, "http://"),
	}
	switch {
	case sh.Storage.Driver != "":
		st["driver"] = sh.Storage.Driver
		if len(sh.Storage.Parameters) > 0 {
			st["parameters"] = sh.Storage.Parameters
		}
	case sh.SharedDir != "":
		st["parameters"] = map[string]any{"rootdirectory": sh.SharedDir}
		cluster["sharedFilesystem"] = true
	}
	meta := map[string]any{"driver": "postgres", "dsn": sh.DSN}
	if sh.Staleness != "" {
		meta["staleness"] = sh.Staleness
	}
	doc["metadata"], doc["cluster"] = meta, cluster
	out, err := yaml.Marshal(doc)
	if err != nil {
		tb.Fatalf("encode the replica's configuration: %v", err)
	}
	if err := os.WriteFile(r.ConfigPath, out, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// Reconfigure rewrites the replica's configuration from cfg, keeping its
// cluster sections, sends SIGHUP and waits for the reload, as
// Airlock.Reconfigure does.
func (r *Replica) Reconfigure(tb testing.TB, cfg Config) {
	tb.Helper()
	seen := len(r.Logs())
	r.writeConfig(tb, cfg)
	if err := r.Signal(syscall.SIGHUP); err != nil {
		tb.Fatalf("reload replica %s: %v", r.URL, err)
	}
	line, err := r.WaitLogFrom(tb.Context(), seen, 30*time.Second, func(l LogLine) bool {
		return l.Msg() == "configuration reloaded" || strings.HasPrefix(l.Msg(), "configuration reload refused")
	})
	if err != nil {
		tb.Fatalf("replica %s did not reload after SIGHUP: %v", r.URL, err)
	}
	if line.Msg() != "configuration reloaded" {
		tb.Fatalf("replica %s refused the new configuration: %s", r.URL, line.Raw)
	}
}

// FillsStarted returns the replicas (their indexes in rs) that logged
// the start of an upstream transfer of blob digest since the first from[i]
// lines of each (nil from: since they started). In a cluster that keeps
// one transfer per blob there is exactly one: the fill's leader. A fill
// that reads another replica's fill over the peer listener logs its
// start too, from "peer <address>", and is not counted.
func FillsStarted(rs []*Replica, digest string, from []int) []int {
	var out []int
	for i, r := range rs {
		lines := r.Logs()
		if from != nil {
			lines = lines[min(from[i], len(lines)):]
		}
		for _, l := range lines {
			src, _ := l.Fields["from"].(string)
			if l.Msg() == "blob fill started" && l.Fields["digest"] == digest && !strings.HasPrefix(src, "peer") {
				out = append(out, i)
				break
			}
		}
	}
	return out
}

// WaitFillLeader waits until exactly one replica logged the start of the
// upstream transfer of digest and returns its index; it fails when two
// did, or when none did within timeout.
func WaitFillLeader(tb testing.TB, rs []*Replica, digest string, timeout time.Duration) int {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		switch got := FillsStarted(rs, digest, nil); {
		case len(got) == 1:
			return got[0]
		case len(got) > 1:
			tb.Fatalf("replicas %v each started an upstream transfer of %s; want one for the cluster", got, digest)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no replica logged \"blob fill started\" for %s within %v", digest, timeout)
		}
		select {
		case <-tb.Context().Done():
			tb.Fatal(tb.Context().Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// LogLines returns the replica's lines logged since the first from whose
// message starts with prefix, for reports.
func (r *Replica) LogLines(from int, prefix string) []LogLine {
	lines := r.Logs()
	var out []LogLine
	for _, l := range lines[min(from, len(lines)):] {
		if strings.HasPrefix(l.Msg(), prefix) {
			out = append(out, l)
		}
	}
	return out
}
