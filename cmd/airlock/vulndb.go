package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/scanner"
)

// importFunc loads vulnerability data into the scanner's database
// (scanner.Import).
type importFunc func(ctx context.Context, cfg config.Scanner, r io.Reader, log *slog.Logger) (scanner.ImportResult, error)

func newVulndbCommand() *cobra.Command { return newVulndbCommandWith(scanner.Import) }

// newVulndbCommandWith builds `airlock vulndb` on imp, which the tests of
// the command's arguments replace.
func newVulndbCommandWith(imp importFunc) *cobra.Command {
	cmd := &cobra.Command{Use: "vulndb", Short: "Work with the vulnerability data the scanner matches images against"}
	var configPath, output string
	importCmd := &cobra.Command{
		Use:   "import --config FILE DATA.jsonl",
		Short: "Load vulnerability data exported by `clairctl export-updaters`: the air-gapped path",
		Long: "Load vulnerability data in claircore's updater-export format (JSON Lines, as\n" +
			"`clairctl export-updaters` writes it, plain, gzip or zstd; - reads standard input)\n" +
			"into the scanner's database, scanner.database of the configuration FILE. Each\n" +
			"updater's data in the file replaces what the database held of it; data already\n" +
			"loaded (the same fingerprint) is skipped. A running airlock matches its images\n" +
			"against the new data within a minute and quarantines those that now break a policy.",
		Args: func(_ *cobra.Command, args []string) error {
			switch len(args) {
			case 0:
				return errors.New("vulndb import needs the data file: airlock vulndb import --config FILE DATA.jsonl (- for standard input)")
			case 1:
				return nil
			}
			return fmt.Errorf("vulndb import takes one data file, not %d: %s", len(args), strings.Join(args, " "))
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			cfg, err := vulndbConfig(configPath)
			if err != nil {
				return err
			}
			name := args[0]
			in, closeIn, err := openVulnData(name, cmd.InOrStdin())
			if err != nil {
				return err
			}
			defer closeIn()
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)).With(slog.String("component", "vulndb"))
			res, err := imp(cmd.Context(), cfg.Scanner, in, log)
			if err != nil {
				return fmt.Errorf("importing vulnerability data from %s: %w", displayData(name), err)
			}
			if output == "json" {
				if res.Updaters == nil {
					res.Updaters = []string{}
				}
				return writeJSONTo(cmd.OutOrStdout(), res)
			}
			writeImportResult(cmd.OutOrStdout(), displayData(name), res)
			return nil
		},
	}
	importCmd.Flags().StringVar(&configPath, "config", "", "airlock's configuration file, whose scanner.database receives the data (required)")
	importCmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.AddCommand(importCmd)
	return cmd
}

// vulndbConfig loads the configuration as serve does and checks that it
// names the scanner's database.
func vulndbConfig(path string) (*config.Config, error) {
	if path == "" {
		return nil, errors.New("vulndb import needs --config FILE: the configuration airlock serves with, whose scanner.database receives the data")
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	if cfg.Scanner.Database == "" && cfg.Scanner.DatabaseFile == "" {
		return nil, fmt.Errorf("%s sets no scanner.database (or scanner.databaseFile): vulnerability data goes into the scanner's "+
			"PostgreSQL database, so name the one airlock serves with", path)
	}
	return cfg, nil
}

func displayData(name string) string {
	if name == "-" {
		return "standard input"
	}
	return name
}

// Magic numbers of the compressed forms clairctl writes.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// openVulnData opens the data file (stdin for "-"), uncompressing gzip and
// zstd, and checks that it starts as JSON Lines do, so that a wrong file
// is named before the database is touched.
func openVulnData(name string, stdin io.Reader) (io.Reader, func(), error) {
	var src io.Reader = stdin
	closeSrc := func() {}
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, nil, fmt.Errorf("opening the vulnerability data: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("reading the vulnerability data: %w", err)
		}
		if st.IsDir() {
			f.Close()
			return nil, nil, fmt.Errorf("%s is a directory: name the file `clairctl export-updaters` wrote", name)
		}
		src, closeSrc = f, func() { f.Close() }
	}
	what := displayData(name)
	br := bufio.NewReaderSize(src, 64<<10)
	var r io.Reader = br
	closeAll := closeSrc
	switch head, _ := br.Peek(4); {
	case len(head) == 0:
		closeSrc()
		return nil, nil, fmt.Errorf("%s is empty: export the data with `clairctl export-updaters FILE` on a machine that reaches the feeds", what)
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			closeSrc()
			return nil, nil, fmt.Errorf("%s looks gzip-compressed but is not: %w", what, err)
		}
		r, closeAll = zr, func() { zr.Close(); closeSrc() }
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			closeSrc()
			return nil, nil, fmt.Errorf("%s looks zstd-compressed but is not: %w", what, err)
		}
		r, closeAll = zr, func() { zr.Close(); closeSrc() }
	}
	// The uncompressed data must start as a JSON object.
	lines := bufio.NewReaderSize(r, 64<<10)
	first, err := firstByte(lines)
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if first != '{' {
		closeAll()
		return nil, nil, fmt.Errorf("%s is not claircore's updater export (JSON Lines, as `clairctl export-updaters` writes, "+
			"plain, gzip or zstd): it starts with %q", what, first)
	}
	return lines, closeAll, nil
}

// firstByte is the first byte of r that is not white space, without
// consuming it.
func firstByte(r *bufio.Reader) (byte, error) {
	for n := 1; n <= r.Size(); n++ {
		b, err := r.Peek(n)
		if len(b) < n {
			if errors.Is(err, io.EOF) {
				return 0, errors.New("it holds no data once uncompressed")
			}
			return 0, err
		}
		switch c := b[n-1]; c {
		case ' ', '\t', '\r', '\n':
		default:
			return c, nil
		}
	}
	return ' ', nil // a buffer of white space is no JSON Lines either
}

// writeImportResult says what an import changed.
func writeImportResult(w io.Writer, name string, res scanner.ImportResult) {
	if len(res.Updaters) == 0 {
		fmt.Fprintf(w, "nothing changed: the scanner's database already holds the data of every updater in %s\n", name)
		return
	}
	fmt.Fprintf(w, "imported %s into the scanner's database:\n", name)
	fmt.Fprintf(w, "  updaters:         %s\n", strings.Join(res.Updaters, ", "))
	fmt.Fprintf(w, "  vulnerabilities:  %d added, %d removed\n", res.Added, res.Removed)
	if res.Affected > 0 {
		fmt.Fprintf(w, "  images affected:  %d scanned manifests matched again\n", res.Affected)
	}
	fmt.Fprintln(w, "A running airlock re-checks its images against the new data within a minute; "+
		"`airlock quarantine list` shows those that now break a policy.")
}
