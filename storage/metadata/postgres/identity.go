package postgres

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Reidentify records what each upstream name stands for (its URL, given by
// the caller as ids[name]) and, for every name whose identity differs from
// the one recorded, withdraws what the registry that used to answer under
// that name vouched for: the Confirmed flag of every blob and manifest link
// of its repositories, and its tag records. A name seen for the first time
// is only recorded. It returns the names whose confirmations were
// withdrawn, sorted.
//
// Replicas starting together with the same configuration withdraw once:
// the first records the new identity under the name's row lock, the others
// then find it recorded. A withdrawal is announced as one "upstream"
// change, which drops every tag and link of the name's repositories from
// each replica's cache.
func (s *Store) Reidentify(ctx context.Context, ids map[string]string) ([]string, error) {
	for name := range ids {
		if err := checkRepo(name); err != nil || strings.Contains(name, "/") {
			return nil, fmt.Errorf("metadata: invalid upstream name %q", name)
		}
		if err := checkText("identity of upstream "+name, ids[name]); err != nil {
			return nil, err
		}
	}
	// Names in order, so that two replicas lock their rows in one order.
	names := slices.Sorted(maps.Keys(ids))
	var changed []string
	err := s.writeWithin(ctx, max(s.opts.OpTimeout, withdrawTimeout), func(ctx context.Context, tx pgx.Tx, ch *changes) error {
		changed = changed[:0]
		for _, name := range names {
			moved, err := reidentify(ctx, tx, name, ids[name])
			if err != nil {
				return fmt.Errorf("metadata: recording the identity of upstream %s: %w", name, err)
			}
			if moved {
				changed = append(changed, name)
				ch.add(kindUpstream, name)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return changed, nil
}

// withdrawTimeout bounds Reidentify's transaction instead of OpTimeout: a
// withdrawal rewrites every link of the name's repositories, which on a
// large cache (a million links) takes PostgreSQL longer than one
// operation's bound, and would fail the same way at every start.
const withdrawTimeout = 10 * time.Minute

// reidentify records id for name and withdraws the name's confirmations
// and tags if another identity was recorded.
func reidentify(ctx context.Context, tx pgx.Tx, name, id string) (bool, error) {
	tag, err := tx.Exec(ctx, "INSERT INTO airlock_meta_upstreams (name, identity) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, id)
	if err != nil || tag.RowsAffected() > 0 {
		return false, err // first seen: nothing to withdraw
	}
	var old string
	if err := tx.QueryRow(ctx, "SELECT identity FROM airlock_meta_upstreams WHERE name = $1 FOR UPDATE", name).Scan(&old); err != nil {
		return false, err
	}
	if old == id {
		return false, nil
	}
	// The name's repositories are "<name>/…": with bytewise comparison
	// they are exactly those in ["<name>/", "<name>0"), '0' following '/'.
	lo, hi := name+"/", name+"0"
	confirmed := int16(metadata.Confirmed)
	for _, q := range []string{
		"UPDATE airlock_meta_blob_links SET flags = flags & ~$3::smallint WHERE repo >= $1 AND repo < $2 AND flags & $3::smallint <> 0",
		"UPDATE airlock_meta_manifest_links SET flags = flags & ~$3::smallint WHERE repo >= $1 AND repo < $2 AND flags & $3::smallint <> 0",
	} {
		if _, err := tx.Exec(ctx, q, lo, hi, confirmed); err != nil {
			return false, err
		}
	}
	if _, err := tx.Exec(ctx, "DELETE FROM airlock_meta_tags WHERE repo >= $1 AND repo < $2", lo, hi); err != nil {
		return false, err
	}
	_, err = tx.Exec(ctx, "UPDATE airlock_meta_upstreams SET identity = $2 WHERE name = $1", name, id)
	return err == nil, err
}
