package metadata

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// State is where an image stands with the gates: whether it may be served.
type State string

const (
	// StateNone means no gate has decided yet.
	StateNone State = ""
	// StateApproved means policy allowed the image.
	StateApproved State = "approved"
	// StatePending means a check (a scan, a signature lookup) is running.
	StatePending State = "pending"
	// StateQuarantined means policy held the image back for review.
	StateQuarantined State = "quarantined"
	// StateBlocked means policy refused the image.
	StateBlocked State = "blocked"
	// StateReleased means an operator released a quarantined or blocked
	// image by hand.
	StateReleased State = "released"
)

// Valid reports whether s is one of the known states.
func (s State) Valid() bool {
	switch s {
	case StateNone, StateApproved, StatePending, StateQuarantined, StateBlocked, StateReleased:
		return true
	}
	return false
}

// StateRecord is a gate decision about one image: what, why, when and who.
type StateRecord struct {
	State   State
	Reasons []string
	Updated time.Time
	By      string
}

type stateValue struct {
	State   State     `json:"state"`
	Reasons []string  `json:"reasons,omitempty"`
	Updated time.Time `json:"updated"`
	By      string    `json:"by,omitempty"`
}

// State returns the gate state of d in repo. An image nobody has decided
// about has the zero record (StateNone) and no error.
func (db *DB) State(ctx context.Context, repo string, d digest.Digest) (StateRecord, error) {
	key, err := refKey(repo, d)
	if err != nil {
		return StateRecord{}, err
	}
	var v stateValue
	err = db.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStates).Get(key)
		if b == nil {
			return nil
		}
		return json.Unmarshal(b, &v)
	})
	if err != nil {
		return StateRecord{}, fmt.Errorf("state of %s@%s: %w", repo, d, err)
	}
	return StateRecord(v), nil
}

// SetState records a gate decision about d in repo, replacing any earlier one.
func (db *DB) SetState(ctx context.Context, repo string, d digest.Digest, rec StateRecord) error {
	key, err := refKey(repo, d)
	if err != nil {
		return err
	}
	if !rec.State.Valid() {
		return fmt.Errorf("metadata: unknown state %q for %s@%s", rec.State, repo, d)
	}
	val, err := json.Marshal(stateValue(rec))
	if err != nil {
		return err
	}
	return db.update(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketStates).Put(key, val)
	})
}
