package alerts_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// A receiver that has been down long enough to have more pending events
// than one read of the outbox returns must not hide the events of the
// receivers that answer.
func TestDeadWebhookBacklogDoesNotStarveOthers(t *testing.T) {
	t.Parallel()
	dead, alive := newReceiver(t, always(http.StatusInternalServerError)), newReceiver(t, nil)
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{
		{URL: dead.URL, Events: []string{config.EventQuarantined}},
		{URL: alive.URL, Events: []string{config.EventBlocked}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	// 1500 events for the dead receiver, queued in one change to keep the
	// test fast, then one for the live one.
	var backlog []metadata.Delivery
	for range 1500 {
		backlog = append(backlog, router.Route(quarantined("hcl/app"))...)
	}
	_, err = store.UpdateImage(t.Context(), "hcl/app", testDigest, time.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		return metadata.Change{Actor: "policy", Action: "decide", Deliveries: backlog}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	blocked := quarantined("hcl/other")
	blocked.Type, blocked.State = config.EventBlocked, metadata.StateBlocked
	if n := queue(t, store, router, blocked); n != 1 {
		t.Fatalf("queued %d deliveries for the live receiver, want 1", n)
	}
	start(t, alerts.Options{Outbox: store, Router: router, Registerer: prometheus.NewRegistry(),
		MinBackoff: time.Minute, MaxBackoff: time.Hour})
	eventually(t, "the live webhook has its event", func() bool { return len(alive.requests()) == 1 })
	// The dead one was tried once, meanwhile, and then waits out its
	// backoff rather than being sent its backlog.
	eventually(t, "the dead webhook was tried", func() bool { return len(dead.requests()) >= 1 })
	if n := len(dead.requests()); n != 1 {
		t.Errorf("the dead webhook got %d requests, want 1 (its first, then backoff)", n)
	}
}

// A receiver with more pending events than its share of one read gets
// them all without waiting for the next poll: its worker asks for the
// next read once it sent a full share.
func TestBacklogBeyondOneShareDrainsWithoutPolling(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	// Nine more webhooks, for other events, make a share 1000/11 = 90
	// deliveries, so that the test need not send hundreds.
	hooks := []config.Webhook{{URL: rc.URL, Events: []string{config.EventQuarantined}}}
	for i := range 9 {
		hooks = append(hooks, config.Webhook{URL: rc.URL + "/other/" + strconv.Itoa(i), Events: []string{config.EventBlocked}})
	}
	router, err := alerts.NewRouter(config.Alerts{Webhooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	var backlog []metadata.Delivery
	for range 200 {
		backlog = append(backlog, router.Route(quarantined("hcl/app"))...)
	}
	_, err = store.UpdateImage(t.Context(), "hcl/app", testDigest, time.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		return metadata.Change{Actor: "policy", Action: "decide", Deliveries: backlog}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, alerts.Options{Outbox: store, Router: router, Registerer: prometheus.NewRegistry(), PollInterval: time.Hour})
	eventually(t, "all 200 events are delivered", func() bool { return len(rc.requests()) == 200 })
}
