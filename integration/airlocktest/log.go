package airlocktest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// LogLine is one line airlock wrote on stderr. Fields is nil for a line
// that is not JSON (a panic, a race report).
type LogLine struct {
	Raw    string
	Fields map[string]any
}

// Msg returns the line's "msg" field.
func (l LogLine) Msg() string {
	s, _ := l.Fields["msg"].(string)
	return s
}

// Level returns the line's "level" field.
func (l LogLine) Level() string {
	s, _ := l.Fields["level"].(string)
	return s
}

// logBook keeps every line of every run of one airlock.
type logBook struct {
	mu    sync.Mutex
	lines []LogLine
	grew  chan struct{} // closed and replaced on every new line
}

func (b *logBook) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := LogLine{Raw: sc.Text()}
		var fields map[string]any
		if json.Unmarshal(sc.Bytes(), &fields) == nil {
			line.Fields = fields
		}
		b.mu.Lock()
		b.lines = append(b.lines, line)
		if b.grew != nil {
			close(b.grew)
			b.grew = nil
		}
		b.mu.Unlock()
	}
}

func (b *logBook) snapshot() ([]LogLine, chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.grew == nil {
		b.grew = make(chan struct{})
	}
	return append([]LogLine(nil), b.lines...), b.grew
}

func (b *logBook) matching(substr string) []LogLine {
	lines, _ := b.snapshot()
	var out []LogLine
	for _, l := range lines {
		if strings.Contains(l.Raw, substr) {
			out = append(out, l)
		}
	}
	return out
}

func (b *logBook) tail(n int) string {
	lines, _ := b.snapshot()
	lines = lines[max(0, len(lines)-n):]
	var s strings.Builder
	for _, l := range lines {
		s.WriteString(l.Raw)
		s.WriteByte('\n')
	}
	return s.String()
}

// Logs returns every line logged so far, across restarts.
func (a *Airlock) Logs() []LogLine {
	lines, _ := a.log.snapshot()
	return lines
}

// LogsContaining returns the lines whose raw text contains substr.
func (a *Airlock) LogsContaining(substr string) []LogLine {
	return a.log.matching(substr)
}

// WaitLog waits until a logged line satisfies match, or ctx ends or ten
// seconds pass.
func (a *Airlock) WaitLog(ctx context.Context, match func(LogLine) bool) (LogLine, error) {
	return a.WaitLogFrom(ctx, 0, 10*time.Second, match)
}

// WaitLogFrom waits until a line logged after the first from lines (a
// len(Logs()) taken before acting) satisfies match, or ctx ends or
// timeout passes.
func (a *Airlock) WaitLogFrom(ctx context.Context, from int, timeout time.Duration, match func(LogLine) bool) (LogLine, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := from
	for {
		lines, grew := a.log.snapshot()
		for _, l := range lines[min(seen, len(lines)):] {
			if match(l) {
				return l, nil
			}
		}
		seen = max(seen, len(lines))
		select {
		case <-grew:
		case <-ctx.Done():
			return LogLine{}, fmt.Errorf("no matching airlock log line among %d: %w", seen, ctx.Err())
		}
	}
}
