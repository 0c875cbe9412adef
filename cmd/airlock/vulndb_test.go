package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/scanner"
)

// exportLines are two lines in the shape `clairctl export-updaters`
// writes: an update operation's entry, then its vulnerabilities.
const exportLines = `{"updater":"debian/updater/bookworm","fingerprint":"etag-1","date":"2026-11-30T00:00:00Z","kind":"vulnerability"}
{"updater":"debian/updater/bookworm","vuln":{"name":"CVE-2026-0001","package":{"name":"openssl"},"fixed_in_version":"3.0.15-1"}}
`

// recordingImport stands in for scanner.Import: it reads what the command
// hands it and answers res or err.
type recordingImport struct {
	calls int
	cfg   config.Scanner
	data  string
	res   scanner.ImportResult
	err   error
}

func (ri *recordingImport) run(_ context.Context, cfg config.Scanner, r io.Reader, _ *slog.Logger) (scanner.ImportResult, error) {
	ri.calls++
	ri.cfg = cfg
	b, err := io.ReadAll(r)
	if err != nil {
		return scanner.ImportResult{}, err
	}
	ri.data = string(b)
	return ri.res, ri.err
}

// vulndbFiles writes the configurations and data files the cases use.
type vulndbFiles struct {
	dir, config, noScanner, badConfig          string
	plain, gz, zst, empty, blank, notJSON, bad string
}

func newVulndbFiles(t *testing.T) vulndbFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := "listen: \"127.0.0.1:5000\"\nstorage: {path: " + filepath.Join(dir, "store") + "}\n" +
		"upstreams: [{name: hub, url: \"https://registry-1.docker.io\", default: true}]\n"
	var gz, zst bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(exportLines))
	zw.Close()
	enc, err := zstd.NewWriter(&zst)
	if err != nil {
		t.Fatal(err)
	}
	enc.Write([]byte(exportLines))
	enc.Close()
	return vulndbFiles{
		dir:       dir,
		config:    write("airlock.yaml", []byte(base+"scanner: {database: \"postgres://airlock@127.0.0.1:5432/airlock?sslmode=disable\"}\n")),
		noScanner: write("plain.yaml", []byte(base)),
		badConfig: write("typo.yaml", []byte(base+"scaner: {database: x}\n")),
		plain:     write("updates.jsonl", []byte(exportLines)),
		gz:        write("updates.json.gz", gz.Bytes()),
		zst:       write("updates.json.zst", zst.Bytes()),
		empty:     write("empty.jsonl", nil),
		blank:     write("blank.jsonl", []byte("\n\n  \n")),
		notJSON:   write("updates.tar", []byte("ustar\x00data")),
		bad:       write("broken.gz", append([]byte{0x1f, 0x8b}, "not really gzip"...)),
	}
}

// runVulndb runs `airlock vulndb` with args on imp, stdin as its input.
func runVulndb(t *testing.T, imp importFunc, stdin string, args ...string) (stdout string, err error) {
	t.Helper()
	cmd := newVulndbCommandWith(imp)
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err = cmd.ExecuteContext(t.Context())
	return out.String(), err
}

// TestVulndbImport: the data reaches the import uncompressed whatever form
// it came in, with the configuration's scanner settings, and the command
// says what changed.
func TestVulndbImport(t *testing.T) {
	t.Parallel()
	files := newVulndbFiles(t)
	res := scanner.ImportResult{Updaters: []string{"debian/updater/bookworm", "alpine-main-v3.20-updater"}, Added: 1234, Removed: 56, Affected: 7}
	for _, tc := range []struct {
		name, data, stdin string
	}{
		{"plain", files.plain, ""},
		{"gzip", files.gz, ""},
		{"zstd", files.zst, ""},
		{"standard input", "-", exportLines},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imp := &recordingImport{res: res}
			out, err := runVulndb(t, imp.run, tc.stdin, "import", "--config", files.config, tc.data)
			if err != nil {
				t.Fatal(err)
			}
			if imp.calls != 1 || imp.data != exportLines || imp.cfg.Database != "postgres://airlock@127.0.0.1:5432/airlock?sslmode=disable" {
				t.Fatalf("import got %d calls, database %q, data %q", imp.calls, imp.cfg.Database, imp.data)
			}
			for _, want := range []string{"imported ", "updaters:         debian/updater/bookworm, alpine-main-v3.20-updater",
				"vulnerabilities:  1234 added, 56 removed", "7 scanned manifests matched again",
				"re-checks its images against the new data within a minute"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}

	imp := &recordingImport{res: res}
	out, err := runVulndb(t, imp.run, "", "import", "--config", files.config, "-o", "json", files.plain)
	var got scanner.ImportResult
	if err != nil || json.Unmarshal([]byte(out), &got) != nil || got.Added != 1234 || len(got.Updaters) != 2 {
		t.Fatalf("-o json = %q, %v", out, err)
	}
	imp = &recordingImport{}
	out, err = runVulndb(t, imp.run, "", "import", "--config", files.config, files.plain)
	if err != nil || !strings.Contains(out, "nothing changed: the scanner's database already holds the data of every updater in "+files.plain) {
		t.Fatalf("an import that changed nothing = %q, %v", out, err)
	}
}

// TestVulndbImportRefusals: each mistake is named before the database is
// touched, and a failed import exits non-zero with its cause.
func TestVulndbImportRefusals(t *testing.T) {
	t.Parallel()
	files := newVulndbFiles(t)
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  string
	}{
		{"no config", []string{"import", files.plain}, "", "vulndb import needs --config FILE"},
		{"config without the scanner", []string{"import", "--config", files.noScanner, files.plain}, "",
			files.noScanner + " sets no scanner.database (or scanner.databaseFile)"},
		{"config that does not load", []string{"import", "--config", files.badConfig, files.plain}, "", `unknown key "scaner"`},
		{"missing config", []string{"import", "--config", filepath.Join(files.dir, "absent.yaml"), files.plain}, "", "absent.yaml"},
		{"no data", []string{"import", "--config", files.config}, "", "vulndb import needs the data file"},
		{"two data files", []string{"import", "--config", files.config, files.plain, files.gz}, "", "takes one data file, not 2"},
		{"missing data", []string{"import", "--config", files.config, filepath.Join(files.dir, "absent.jsonl")}, "",
			"opening the vulnerability data: open " + filepath.Join(files.dir, "absent.jsonl") + ": no such file or directory"},
		{"a directory", []string{"import", "--config", files.config, files.dir}, "", "is a directory"},
		{"empty", []string{"import", "--config", files.config, files.empty}, "", files.empty + " is empty"},
		{"empty stdin", []string{"import", "--config", files.config, "-"}, "", "standard input is empty"},
		{"white space only", []string{"import", "--config", files.config, files.blank}, "", "holds no data once uncompressed"},
		{"not JSON Lines", []string{"import", "--config", files.config, files.notJSON}, "",
			files.notJSON + ` is not claircore's updater export (JSON Lines, as ` + "`clairctl export-updaters`" + ` writes, plain, gzip or zstd): it starts with 'u'`},
		{"broken gzip", []string{"import", "--config", files.config, files.bad}, "", "looks gzip-compressed but is not"},
		{"bad output", []string{"import", "--config", files.config, "-o", "yaml", files.plain}, "", `unknown output format "yaml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imp := &recordingImport{}
			out, err := runVulndb(t, imp.run, tc.stdin, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want one with %q", err, tc.want)
			}
			if imp.calls != 0 || out != "" {
				t.Fatalf("the import ran (%d calls) or printed %q", imp.calls, out)
			}
		})
	}

	imp := &recordingImport{err: errors.New("connecting to the scanner's database: connection refused")}
	out, err := runVulndb(t, imp.run, "", "import", "--config", files.config, files.gz)
	if err == nil || err.Error() != "importing vulnerability data from "+files.gz+": connecting to the scanner's database: connection refused" || out != "" {
		t.Fatalf("a failed import = %q, %v", out, err)
	}
}

// TestVulndbImportUnreachableDatabase runs the real import against a
// database address nothing listens on: it fails, promptly, saying so.
func TestVulndbImportUnreachableDatabase(t *testing.T) {
	t.Parallel()
	files := newVulndbFiles(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(files.dir, "dead.yaml")
	body, _ := os.ReadFile(files.noScanner)
	body = append(body, "scanner: {database: \"postgres://airlock@"+dead+"/airlock?sslmode=disable&connect_timeout=5\"}\n"...)
	if err := os.WriteFile(cfg, body, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newVulndbCommand()
	cmd.SetArgs([]string{"import", "--config", cfg, files.plain})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err = cmd.ExecuteContext(ctx)
	if err == nil || !strings.HasPrefix(err.Error(), "importing vulnerability data from "+files.plain+": ") {
		t.Fatalf("import into %s: %v", dead, err)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("the import took %v to fail", time.Since(start))
	}
}
