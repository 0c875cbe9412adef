package alerts_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// noContent stands for the proxy's cached content: a block of a digest
// never pulled has nothing to withdraw.
type noContent struct{}

func (noContent) Withdraw(context.Context, string, digest.Digest, func(digest.Digest) bool) error {
	return nil
}
func (noContent) Remove(context.Context, string, digest.Digest) error { return nil }

// TestGateChangeReachesWebhook wires the gate, the router and the
// deliverer as serve does: an admin's block is queued with the change and
// sent at once on the gate's nudge, signed, with the audit anchor.
func TestGateChangeReachesWebhook(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{
		{URL: rc.URL, SecretFile: secretFile(t, "gate-secret"), Events: []string{config.EventBlocked}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	db := openStore(t, t.TempDir())
	// Polls hourly: only the gate's nudge can send the event soon.
	d, _ := start(t, alerts.Options{Outbox: db, Router: router, PollInterval: time.Hour})
	g, err := gate.New(t.Context(), gate.Options{Store: db, Content: noContent{}, Alerts: router, Delivered: d.Nudge})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // past the deliverer's first poll
	if _, err := g.Block(t.Context(), "hcl/app", testDigest, "admin:alice", "known-bad build"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the block reaches the webhook", func() bool { return len(rc.requests()) == 1 })
	r := rc.requests()[0]
	if sig := r.header.Get(alerts.HeaderSignature); sig != alerts.Sign([]byte("gate-secret"), r.body) {
		t.Errorf("signature %q does not verify", sig)
	}
	var ev metadata.Event
	if err := json.Unmarshal(r.body, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != config.EventBlocked || ev.Repository != "hcl/app" || ev.Digest != testDigest ||
		ev.State != metadata.StateBlocked || ev.Actor != "admin:alice" || ev.Reason != "known-bad build" {
		t.Errorf("webhook got %+v, want the block by admin:alice", ev)
	}
	audit, err := db.Audit(t.Context(), 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(audit) == 0 || ev.Audit != audit[len(audit)-1].Hash {
		t.Errorf("event's audit anchor %q is not the hash of the block's audit record %+v", ev.Audit, audit)
	}
}
