package scannertest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/quay/claircore"
	"github.com/quay/claircore/libvuln/driver"
	"github.com/quay/claircore/libvuln/jsonblob"
	cctypes "github.com/quay/claircore/toolkit/types"
)

// Distributions as claircore's updaters name them; the images of
// DebianFiles and AlpineFiles are indexed as these.
var (
	Bookworm = &claircore.Distribution{
		Name: "Debian GNU/Linux", DID: "debian", VersionID: "12", Version: "12 (bookworm)",
		VersionCodeName: "bookworm", PrettyName: "Debian GNU/Linux 12 (bookworm)",
	}
	Alpine318 = &claircore.Distribution{
		Name: "Alpine Linux", DID: "alpine", VersionID: "3.18", PrettyName: "Alpine Linux v3.18",
	}
)

// Updater names, as claircore's updaters name their data.
const (
	DebianUpdater = "debian/updater"
	AlpineUpdater = "alpine-main-v3.18-updater"
)

// DebianVuln is a Debian security tracker record for Debian 12, as the
// debian updater makes it: id affects source package source until fixed
// ("" when no fix exists yet; "0" when bookworm was never affected).
// urgency is Debian's word for it, sev claircore's normalised severity.
func DebianVuln(id, source, fixed, urgency string, sev claircore.Severity) *claircore.Vulnerability {
	return &claircore.Vulnerability{
		Updater:            DebianUpdater,
		Name:               id,
		Description:        id + " in " + source,
		Links:              "https://security-tracker.debian.org/tracker/" + id,
		Severity:           urgency,
		NormalizedSeverity: sev,
		Dist:               Bookworm,
		FixedInVersion:     fixed,
		Package:            &claircore.Package{Name: source, Kind: cctypes.SourcePackage},
	}
}

// AlpineVuln is an Alpine 3.18 secdb record, as the alpine updater makes
// it: unrated (Alpine rates nothing), fixed in fixed.
func AlpineVuln(id, origin, fixed string) *claircore.Vulnerability {
	return &claircore.Vulnerability{
		Updater:            AlpineUpdater,
		Name:               id,
		Links:              "https://security.alpinelinux.org/vuln/" + id,
		NormalizedSeverity: claircore.Unknown,
		Dist:               Alpine318,
		FixedInVersion:     fixed,
		Package:            &claircore.Package{Name: origin, Kind: cctypes.SourcePackage},
	}
}

// Update is one updater's data in an export: all of it, replacing what a
// database held of that updater. Fingerprint tells versions apart; an
// update whose fingerprint the database has already is skipped on import.
type Update struct {
	Updater     string
	Fingerprint string
	Vulns       []*claircore.Vulnerability
}

// Export is an updater export of updates, in the JSON Lines `clairctl
// export-updaters` writes, made by claircore's own encoder.
func Export(tb testing.TB, updates ...Update) []byte {
	tb.Helper()
	st, err := jsonblob.New()
	if err != nil {
		tb.Fatalf("scannertest: export: %v", err)
	}
	for _, u := range updates {
		if _, err := st.UpdateVulnerabilities(context.Background(), u.Updater, driver.Fingerprint(u.Fingerprint), u.Vulns); err != nil {
			tb.Fatalf("scannertest: export of %s: %v", u.Updater, err)
		}
	}
	var buf bytes.Buffer
	if err := st.Store(&buf); err != nil {
		tb.Fatalf("scannertest: export: %v", err)
	}
	return buf.Bytes()
}

// WriteExport writes Export(updates) to a new file in dir and returns
// its path, for `airlock vulndb import`.
func WriteExport(tb testing.TB, dir, name string, updates ...Update) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, Export(tb, updates...), 0o600); err != nil {
		tb.Fatalf("scannertest: %v", err)
	}
	return p
}
