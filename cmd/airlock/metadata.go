package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/console"
	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/evict"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/storage/metadata/postgres"
)

// metaStore is what the gateway uses of its metadata index: the proxy's
// tags, manifests and links, the gate's image states, the admin API's and
// console's reads, the alerts' outbox, the evictor's last uses and size,
// and the start-up chores. *metadata.DB (bbolt) and *postgres.Store
// implement it.
type metaStore interface {
	proxy.Metadata
	gate.Store
	admin.Store
	admin.Tags
	console.Manifests
	alerts.Outbox
	evict.Uses
	evict.Index
	// The proxy finds these by type assertion to withdraw and delete
	// content; a store without them would fail only when an image is
	// blocked, so they are required here, where it shows at build time.
	ManifestLinks(ctx context.Context, repo string) (map[digest.Digest]metadata.Link, error)
	WithdrawManifest(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) error
	UnlinkImage(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) ([]digest.Digest, error)
	Reidentify(ctx context.Context, ids map[string]string) ([]string, error)
	Reconcile(ctx context.Context, blobs metadata.Walker) (int, error)
	Close() error
}

var (
	_ metaStore = (*metadata.DB)(nil)
	_ metaStore = (*postgres.Store)(nil)
)

// openMetadata opens the configured metadata store. pg is the same store
// when it is PostgreSQL (nil with bbolt): clustering and the change
// notices need it.
func openMetadata(ctx context.Context, cfg *config.Config, log *slog.Logger) (meta metaStore, pg *postgres.Store, err error) {
	if !cfg.Metadata.Postgres() {
		db, err := metadata.Open(bboltPath(cfg))
		if err != nil {
			return nil, nil, err
		}
		return db, nil, nil
	}
	dsn, err := cfg.Metadata.ConnString()
	if err != nil {
		return nil, nil, err
	}
	s, err := postgres.Open(ctx, postgres.Options{DSN: dsn, Staleness: cfg.Metadata.Staleness.Std(),
		Logger: log.With(slog.String("component", "metadata"))})
	if err != nil {
		return nil, nil, fmt.Errorf("metadata.driver postgres: %w (check metadata.dsn or metadata.dsnFile, and that PostgreSQL is up)", err)
	}
	return s, s, nil
}

// bboltPath is where the bbolt store lives.
func bboltPath(cfg *config.Config) string { return filepath.Join(cfg.Storage.Path, "metadata.db") }

func newMetadataCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "metadata", Short: "Work with airlock's metadata store"}
	cmd.AddCommand(newMigrateCommand())
	return cmd
}

// migrateOptions are `airlock metadata migrate`'s flags.
type migrateOptions struct {
	from, to, config, bbolt string
	timeout                 time.Duration
}

func newMigrateCommand() *cobra.Command {
	var o migrateOptions
	cmd := &cobra.Command{
		Use:   "migrate --from bbolt --to postgres --config FILE",
		Short: "Copy a single node's bbolt metadata into PostgreSQL, to run several replicas",
		Long: "Copy everything a stopped airlock's bbolt metadata file holds (tags, manifests, links, image states and\n" +
			"admin decisions, the audit log with its hash chain, the alerts' outbox, last-use times) into the empty\n" +
			"PostgreSQL database that --config's metadata section names, in one transaction. Stop airlock first: the\n" +
			"file is opened read-only and a running airlock holds it locked. A database that holds anything is refused.\n" +
			"Then set metadata.driver: postgres (and the cluster section) and start the replicas.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMigrate(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&o.from, "from", "", "the store to copy from: bbolt")
	cmd.Flags().StringVar(&o.to, "to", "", "the store to copy into: postgres")
	cmd.Flags().StringVar(&o.config, "config", "", "configuration file whose metadata section names the PostgreSQL database")
	cmd.Flags().StringVar(&o.bbolt, "bbolt", "", "the bbolt file (default: metadata.db in the configuration's storage.path)")
	cmd.Flags().DurationVar(&o.timeout, "timeout", time.Hour, "give up after this long (nothing is imported then)")
	for _, f := range []string{"from", "to", "config"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

// runMigrate copies the bbolt store o names into PostgreSQL and prints
// what it copied.
func runMigrate(ctx context.Context, o migrateOptions, out io.Writer) error {
	if o.from != config.MetadataBbolt || o.to != config.MetadataPostgres {
		return fmt.Errorf("migrate copies --from bbolt --to postgres only, not --from %q --to %q", o.from, o.to)
	}
	// The document alone: the listen addresses and credentials it names
	// need not exist where the migration runs.
	cfg, err := config.Open(o.config, config.ScopeDocument)
	if err != nil {
		return err
	}
	if !cfg.Metadata.Postgres() {
		return fmt.Errorf("%s: metadata.driver is %s; set it to postgres with metadata.dsn or metadata.dsnFile, the database to copy into",
			o.config, cfg.Metadata.Driver)
	}
	dsn, err := cfg.Metadata.ConnString()
	if err != nil {
		return err
	}
	path := o.bbolt
	if path == "" {
		path = bboltPath(cfg)
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	src, err := metadata.OpenReadOnly(path)
	if err != nil {
		return fmt.Errorf("opening the bbolt store (stop airlock first; --bbolt names another file): %w", err)
	}
	defer src.Close()
	dst, err := postgres.Open(ctx, postgres.Options{DSN: dsn})
	if err != nil {
		return fmt.Errorf("opening the PostgreSQL store: %w", err)
	}
	defer dst.Close()
	start := time.Now()
	stats, err := dst.Import(ctx, src)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w (after --timeout %s; raise it for a large store)", err, o.timeout)
		}
		return err
	}
	printImport(out, path, stats, time.Since(start))
	return nil
}

func printImport(out io.Writer, path string, s postgres.ImportStats, took time.Duration) {
	fmt.Fprintf(out, "copied %s into PostgreSQL in %s (store %s)\n", path, took.Round(time.Millisecond), s.StoreID)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, row := range []struct {
		n    int
		what string
	}{
		{s.Upstreams, "upstream identities"}, {s.Tags, "tags"}, {s.Manifests, "manifests"},
		{s.ManifestLinks, "manifest links"}, {s.BlobLinks, "blob links"}, {s.AccessTimes, "access times"},
		{s.LastUses, "last uses"}, {s.Images, "images"}, {s.AuditRecords, "audit records"}, {s.Deliveries, "pending deliveries"},
	} {
		fmt.Fprintf(w, "%d\t  %s\n", row.n, row.what)
	}
	w.Flush()
	fmt.Fprintf(out, "audit log: %d records chained to head %s, as in the bbolt file; alert event IDs continue after %d\n",
		s.Audit.Records, s.Audit.Head, s.OutboxSeq)
	fmt.Fprintln(out, "next: set metadata.driver: postgres in every replica's configuration and start them")
}
