package scanner

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// listen holds one connection listening for queued jobs and changed
// vulnerability data, and nudges the workers and the re-check. Polling
// covers what is missed while the connection is down.
func (s *Scanner) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := s.listener(ctx)
		if err != nil {
			sleep(ctx, s.tune.poll, nil)
			continue
		}
		// Anything may have happened while no one listened.
		s.nudge(s.wake)
		s.nudge(s.recheck)
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				break
			}
			switch n.Channel {
			case jobsChannel:
				s.nudge(s.wake)
			case dataChannel:
				s.nudge(s.recheck)
			}
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		conn.Close(cctx)
		cancel()
	}
}

// listener takes a connection out of the pool (a listening connection
// must not be handed to other users) and listens on both channels.
func (s *Scanner) listener(ctx context.Context) (*pgx.Conn, error) {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	conn := pc.Hijack()
	for _, ch := range []string{jobsChannel, dataChannel} {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	return conn, nil
}

// measure keeps the queue-depth gauges current.
func (s *Scanner) measure(ctx context.Context) {
	for {
		qctx, cancel := context.WithTimeout(ctx, s.tune.reachable)
		rows, err := s.pool.Query(qctx, `SELECT state, count(*) FROM airlock_scan_jobs GROUP BY state`)
		if err == nil {
			counts := map[string]float64{"queued": 0, "scanning": 0, "done": 0, "failed": 0}
			var state string
			var n int64
			_, err = pgx.ForEachRow(rows, []any{&state, &n}, func() error {
				counts[state] = float64(n)
				return nil
			})
			if err == nil {
				for st, v := range counts {
					s.metrics.jobs.WithLabelValues(st).Set(v)
				}
			}
		}
		cancel()
		if !sleep(ctx, s.tune.stats, nil) {
			return
		}
	}
}
