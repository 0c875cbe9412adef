package scanner

// Temporary stand-ins for the scanner's API, so that the admin API, the
// console and `airlock vulndb import` build before the scanner lands
// (dropped at merge).

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
)

type Scanner struct{}

func Import(ctx context.Context, cfg config.Scanner, r io.Reader, log *slog.Logger) (ImportResult, error) {
	return ImportResult{}, errors.New("scanner: Import is not built yet")
}

func (s *Scanner) SBOM(ctx context.Context, d digest.Digest, format string) ([]byte, error) {
	return nil, ErrNotScanned
}
