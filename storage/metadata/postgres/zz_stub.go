package postgres

import "context"

// state, start and stop are placeholders until cache.go lands.
type state struct{}

func (s *Store) start(ctx context.Context) error { return nil }
func (s *Store) stop() error                     { return nil }
