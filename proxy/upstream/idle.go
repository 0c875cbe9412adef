package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// idleBody enforces the idle-progress timeout on a response body and owns the
// request's context: closing the body releases it.
//
// The timer runs only while a Read is in progress, so a caller that pauses
// between reads (a slow client downstream) is never blamed on the upstream,
// and a body that keeps delivering bytes, however slowly, is never cut.
// When it fires it cancels the request, which unblocks the pending Read.
type idleBody struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	rc     io.ReadCloser
	idle   time.Duration
	timer  *time.Timer
	c      *call
}

func newIdleBody(ctx context.Context, cancel context.CancelCauseFunc, rc io.ReadCloser, idle time.Duration, c *call) *idleBody {
	b := &idleBody{ctx: ctx, cancel: cancel, rc: rc, idle: idle, c: c}
	b.timer = time.AfterFunc(idle, func() { cancel(errStalled) })
	b.timer.Stop()
	return b
}

// Read returns io.EOF at a clean end; any other failure is an *Error of kind
// ErrUnavailable.
func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.idle)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	if err == nil || err == io.EOF {
		return n, err
	}
	if context.Cause(b.ctx) == errStalled {
		err = fmt.Errorf("no data received for %s: %w", b.idle, errStalled)
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, b.c.errorf(ErrUnavailable, err, "reading response body")
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel(context.Canceled)
	return err
}
