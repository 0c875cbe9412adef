package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const metadataBase = "upstreams: [{name: hub, url: \"https://hub.example\"}]\n"

func TestMetadataDefaults(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		want       Metadata
	}{
		{"left out: bbolt", "", Metadata{Driver: MetadataBbolt}},
		{"postgres: staleness 30s", "metadata: {driver: postgres, dsn: \"postgres://db/airlock\"}\n",
			Metadata{Driver: MetadataPostgres, DSN: "postgres://db/airlock", Staleness: Duration(30 * time.Second)}},
		{"postgres: staleness kept", "metadata: {driver: postgres, dsnFile: /run/db/dsn, staleness: 5s}\n",
			Metadata{Driver: MetadataPostgres, DSNFile: "/run/db/dsn", Staleness: Duration(5 * time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse("m.yaml", []byte(metadataBase+tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if c.Metadata != tc.want {
				t.Errorf("metadata = %+v, want %+v", c.Metadata, tc.want)
			}
		})
	}
}

func TestMetadataValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		want       string // the whole located problem, file:line: key: message
	}{
		{"unknown driver", "metadata: {driver: mysql}\n",
			`m.yaml:2: metadata.driver: unknown driver "mysql"; use bbolt (embedded, one process) or postgres (several replicas)`},
		{"postgres without dsn", "metadata:\n  driver: postgres\n",
			"m.yaml:2: metadata.dsn: required with driver postgres; set dsn to a PostgreSQL connection string, or dsnFile to a file holding one"},
		{"dsn and dsnFile", "metadata: {driver: postgres, dsn: \"postgres://db/a\", dsnFile: /run/db/dsn}\n",
			"m.yaml:2: metadata: dsn and dsnFile are both set; set one"},
		{"dsn scheme", "metadata: {driver: postgres, dsn: \"mysql://u:secret@db/a\"}\n",
			`m.yaml:2: metadata.dsn: the scheme is "mysql"; write a postgres:// URL or key=value pairs`},
		{"dsn not a dsn", "metadata: {driver: postgres, dsn: \"db.example\"}\n",
			"m.yaml:2: metadata.dsn: is neither a postgres:// URL nor key=value pairs"},
		{"negative staleness", "metadata: {driver: postgres, dsn: \"host=db\", staleness: -1s}\n",
			"m.yaml:2: metadata.staleness: -1s is negative"},
		{"bbolt with a dsn", "metadata: {dsn: \"postgres://db/a\", staleness: 5s}\n",
			"m.yaml:2: metadata: sets dsn, staleness, but the bbolt driver keeps metadata in storage.path/metadata.db; set driver: postgres to use a database, or remove them"},
		{"misspelt key", "metadata: {driver: postgres, dsnfile: /run/db/dsn}\n",
			`m.yaml:2: unknown key "dsnfile" in metadata (did you mean "dsnFile"?)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("m.yaml", []byte(metadataBase+tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tc.yaml)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error:\n%v\nwant a line containing:\n%s", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the error quotes the connection string's password:\n%v", err)
			}
		})
	}
}

func TestMetadataConnString(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, data string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name string
		m    Metadata
		want string
		err  string
	}{
		{"inline", Metadata{DSN: "host=db dbname=a"}, "host=db dbname=a", ""},
		{"file, trimmed", Metadata{DSNFile: write("dsn", "  postgres://u:pw@db/a \r\n# rotated\n")}, "postgres://u:pw@db/a", ""},
		{"file without newline", Metadata{DSNFile: write("dsn2", "postgres://db/a")}, "postgres://db/a", ""},
		{"none", Metadata{}, "", "metadata: no database configured; set metadata.dsn or metadata.dsnFile"},
		{"file missing", Metadata{DSNFile: filepath.Join(dir, "absent")}, "", "metadata.dsnFile: " + filepath.Join(dir, "absent") + " does not exist"},
		{"first line empty", Metadata{DSNFile: write("blank", "\npostgres://u:pw@db/a\n")}, "", "metadata.dsnFile: the first line of " + filepath.Join(dir, "blank") + " is empty"},
		{"too large", Metadata{DSNFile: write("big", strings.Repeat("pw@", maxSecretBytes))}, "", "is larger than 65536 bytes"},
	} {
		got, err := tc.m.ConnString()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "pw@") {
				t.Errorf("%s: ConnString() = %q, %v; want an error with %q that does not quote the file", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: ConnString() = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestMetadataHost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, data string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("dsn", "postgres://airlock:pw@127.0.0.1/airlock\n")
	empty := write("empty", "\n")
	wrong := write("wrong", "mysql://airlock:pw@db/airlock\n")
	absent := filepath.Join(dir, "absent")
	for _, tc := range []struct {
		name, file, want string
	}{
		{"readable", good, ""},
		{"missing", absent, "metadata.dsnFile: " + absent + " does not exist; check the path, and that the Secret or volume holding it is mounted"},
		{"empty", empty, "metadata.dsnFile: the first line of " + empty + " is empty"},
		{"not a dsn", wrong, `metadata.dsnFile: the scheme is "mysql"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "c.yaml")
			doc := fmt.Sprintf("storage: {path: %q}\n%smetadata: {driver: postgres, dsnFile: %q}\n", filepath.Join(dir, "data"), metadataBase, tc.file)
			if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(path, ScopeDocument); err != nil {
				t.Fatalf("ScopeDocument: %v", err)
			}
			_, err := Open(path, ScopeHost)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), path+":3: "+tc.want) {
				t.Fatalf("error:\n%v\nwant:\n%s", err, path+":3: "+tc.want)
			}
			if strings.Contains(err.Error(), "pw@") {
				t.Errorf("the error quotes the file:\n%v", err)
			}
		})
	}
}

// TestMetadataAndClusterNeedRestart: a reload names these keys, and serve
// lists every key it does not apply live as needing a restart.
func TestMetadataAndClusterDiff(t *testing.T) {
	t.Parallel()
	const shared = "storage: {driver: s3, parameters: {bucket: b}}\n" + metadataBase
	a, err := Parse("a.yaml", []byte(shared+"metadata: {driver: postgres, dsn: \"postgres://db/a\"}\ncluster: {listen: \":5002\", advertise: \"http://10.0.0.1:5002\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("b.yaml", []byte(shared+"metadata: {driver: postgres, dsn: \"postgres://db/b\", staleness: 10s}\ncluster: {listen: \":5003\", advertise: \"http://10.0.0.1:5003\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"metadata.dsn", "metadata.staleness", "cluster.advertise", "cluster.listen"}
	if got := Diff(a, b); !slices.Equal(got, want) {
		t.Errorf("Diff = %q, want %q", got, want)
	}
}
