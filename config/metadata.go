package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Metadata drivers accepted in [Metadata.Driver].
const (
	// MetadataBbolt keeps metadata in storage.path/metadata.db, a file
	// one airlock process holds locked: the embedded default.
	MetadataBbolt = "bbolt"
	// MetadataPostgres keeps metadata in PostgreSQL, which several
	// replicas share.
	MetadataPostgres = "postgres"
)

// DefaultStaleness is metadata.staleness when it is left out.
const DefaultStaleness = Duration(30 * time.Second)

// Metadata says where tags, manifests, links, image states, the audit log
// and the alerts' outbox are kept. It is read at start only; a change
// needs a restart (and, from bbolt to postgres, `airlock metadata
// migrate`).
type Metadata struct {
	// Driver is bbolt (one process, in storage.path/metadata.db) or
	// postgres (several replicas share one database). Default "bbolt".
	Driver string `yaml:"driver"`

	// DSN is the PostgreSQL connection string (a postgres:// URL or
	// key=value pairs). Prefer DSNFile for one with a password. With
	// postgres, exactly one of DSN and DSNFile is required; with bbolt,
	// neither may be set.
	DSN string `yaml:"dsn"`

	// DSNFile is a file holding the connection string on its first line,
	// read once at start (a mounted Secret). Exclusive with DSN.
	DSNFile string `yaml:"dsnFile"`

	// Staleness bounds how long a replica answers from its memory while
	// PostgreSQL's change announcements are not reaching it (the database
	// or the connection to it is down). While they arrive, a change made
	// on any replica applies on all within about a second. postgres only;
	// 0 or absent means 30s.
	Staleness Duration `yaml:"staleness"`
}

// Postgres reports whether metadata lives in PostgreSQL.
func (m *Metadata) Postgres() bool { return m.Driver == MetadataPostgres }

// ConnString returns the PostgreSQL connection string: DSN, or the first
// line of DSNFile, trimmed. Errors name the file, never its content.
func (m *Metadata) ConnString() (string, error) {
	if m.DSNFile == "" {
		if m.DSN == "" {
			return "", fmt.Errorf("metadata: no database configured; set metadata.dsn or metadata.dsnFile")
		}
		return m.DSN, nil
	}
	dsn, err := firstLine(m.DSNFile)
	if err != nil {
		return "", fmt.Errorf("metadata.dsnFile: %w", err)
	}
	return dsn, nil
}

// firstLine reads the first line of the secret file at path, trimmed of
// spaces. Its errors name the file, never its content.
func firstLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", errors.New(fileProblem(path, err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxSecretBytes {
		return "", fmt.Errorf("%s is larger than %d bytes; check that the path names the file holding the connection string", path, maxSecretBytes)
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	s := strings.TrimSpace(string(line))
	if s == "" {
		return "", fmt.Errorf("the first line of %s is empty; write the PostgreSQL connection string on it", path)
	}
	return s, nil
}

func (m *Metadata) applyDefaults() {
	setDefault(&m.Driver, MetadataBbolt)
	if m.Driver == MetadataPostgres {
		setDefault(&m.Staleness, DefaultStaleness)
	}
}

func (m *Metadata) check(p *problems) {
	switch m.Driver {
	case MetadataBbolt:
		var set []string
		for _, k := range []struct {
			key string
			set bool
		}{{"dsn", m.DSN != ""}, {"dsnFile", m.DSNFile != ""}, {"staleness", m.Staleness != 0}} {
			if k.set {
				set = append(set, k.key)
			}
		}
		if len(set) > 0 {
			p.add("metadata", "sets %s, but the bbolt driver keeps metadata in storage.path/metadata.db; set driver: postgres to use a database, or remove them",
				strings.Join(set, ", "))
		}
		return
	case MetadataPostgres:
	default:
		p.add("metadata.driver", "unknown driver %q; use bbolt (embedded, one process) or postgres (several replicas)", m.Driver)
		return
	}
	switch {
	case m.DSN != "" && m.DSNFile != "":
		p.add("metadata", "dsn and dsnFile are both set; set one (dsnFile for a connection string with a password)")
	case m.DSN == "" && m.DSNFile == "":
		p.add("metadata.dsn", "required with driver postgres; set dsn to a PostgreSQL connection string, or dsnFile to a file holding one")
	case m.DSN != "":
		checkDSN(p, "metadata.dsn", m.DSN)
	}
	p.duration("metadata.staleness", m.Staleness)
}

// checkHost checks that the connection string's file can be read.
func (m *Metadata) checkHost(p *problems) {
	if m.Driver != MetadataPostgres || m.DSNFile == "" {
		return
	}
	dsn, err := firstLine(m.DSNFile)
	if err != nil {
		p.add("metadata.dsnFile", "%v", err)
		return
	}
	checkDSN(p, "metadata.dsnFile", dsn)
}
