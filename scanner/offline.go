package scanner

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
)

// jsonConfig returns a claircore configuration function that decodes doc.
func jsonConfig(doc string) func(any) error {
	return func(v any) error { return json.Unmarshal([]byte(doc), v) }
}

type rhelMapping struct{ repo2cpe, name2repos string }

// emptyMapping is a Red Hat mapping file that maps nothing: with it the
// RHEL scanners consult the file and never fetch Red Hat's.
const emptyMapping = `{"data":{}}` + "\n"

// rhelMapping returns the mapping files the RHEL scanners read: the
// configured ones, else empty ones written into the work directory.
func (s *Scanner) rhelMapping() (rhelMapping, error) {
	m := rhelMapping{repo2cpe: s.cfg.RHEL.Repo2CPE, name2repos: s.cfg.RHEL.Name2Repos}
	for _, f := range []struct {
		path *string
		key  string
		name string
	}{
		{&m.repo2cpe, "scanner.rhel.repo2cpe", "repository-to-cpe.json"},
		{&m.name2repos, "scanner.rhel.name2repos", "container-name-repos-map.json"},
	} {
		if *f.path != "" {
			if _, err := os.Stat(*f.path); err != nil {
				return m, fmt.Errorf("scanner: %s: %w", f.key, err)
			}
			continue
		}
		p := filepath.Join(s.arena.dir, "empty-"+f.name)
		if err := os.WriteFile(p, []byte(emptyMapping), 0o644); err != nil {
			return m, fmt.Errorf("scanner: writing an empty Red Hat mapping file: %w", err)
		}
		*f.path = p
	}
	return m, nil
}

// refusingClient is the indexer's HTTP client: it refuses every request.
// With Java's API lookup disabled and the RHEL mapping files local, no
// indexer asks for one; should a future claircore scanner try, indexing
// goes on without what it wanted, and the attempt is logged and counted
// instead of leaving the machine.
func refusingClient(m *metrics, log *slog.Logger) *http.Client {
	return &http.Client{Transport: refusingTransport{m: m, log: log}}
}

type refusingTransport struct {
	m   *metrics
	log *slog.Logger
}

func (t refusingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r.Body.Close()
	}
	t.m.refused.Inc()
	t.log.Warn("the indexer asked for a network request; refused", "url", r.URL.Redacted())
	return nil, fmt.Errorf("airlock's indexer makes no network requests (refused %s %s)", r.Method, r.URL.Redacted())
}
