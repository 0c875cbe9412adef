package postgres

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestAdversaryAuditText: text inside records is JSON, so NULs survive,
// text that is not UTF-8 (a reason quoting what an upstream sent) becomes
// U+FFFD as with bbolt, SQL in it is only text, and the audit chain still
// verifies: a record sealed over text it does not read back as would look
// edited to VerifyAudit.
func TestAdversaryAuditText(t *testing.T) {
	t.Parallel()
	s := openTest(t, pgtest.DSN(t), 0)
	ctx := t.Context()
	const repo = "hub/app"
	d := digest.FromString("image")
	reason := "evil\x00reason \xff ' \"; DROP TABLE airlock_meta_audit; --"
	img, err := s.UpdateImage(ctx, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateBlocked
		img.Reasons = []metadata.Reason{{Type: metadata.ReasonManual, Message: reason}}
		return metadata.Change{Actor: "ad\x00min", Action: "block", Reason: reason}, nil
	})
	if err != nil {
		t.Fatalf("UpdateImage with a NUL in its reason: %v", err)
	}
	got, err := s.Image(ctx, repo, d)
	if err != nil {
		t.Fatal(err)
	}
	if got.Reasons[0].Message != img.Reasons[0].Message || !strings.Contains(got.Reasons[0].Message, "\x00") {
		t.Errorf("reason read back %q, returned %q; want the same, NUL kept", got.Reasons[0].Message, img.Reasons[0].Message)
	}
	recs, err := s.Audit(ctx, 0, 10)
	if err != nil || len(recs) != 1 || !strings.Contains(recs[0].Reason, "\x00") || recs[0].Actor != "ad\x00min" {
		t.Fatalf("Audit = %+v, %v; want the one record with its NULs", recs, err)
	}
	if check, err := s.VerifyAudit(ctx); err != nil || !check.OK {
		t.Fatalf("VerifyAudit = %+v, %v; want it intact", check, err)
	}

}
