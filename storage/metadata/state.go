package metadata

// State is where an image stands with the gate: whether it may be served.
type State string

const (
	// StateNone means no gate has decided yet. A stored image never has
	// it; an audit record has it as From for an image seen for the first
	// time and as To for a deleted one.
	StateNone State = ""
	// StateApproved means policy allowed the image.
	StateApproved State = "approved"
	// StatePending means a check (a scan, a signature lookup) is running.
	StatePending State = "pending"
	// StateQuarantined means policy held the image back for review.
	StateQuarantined State = "quarantined"
	// StateBlocked means an admin refused the image; it wins over any
	// policy result and any release.
	StateBlocked State = "blocked"
	// StateReleased means an admin let a quarantined image through,
	// possibly until a date.
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
