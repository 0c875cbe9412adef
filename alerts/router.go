package alerts

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"sync/atomic"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// maxSecretBytes bounds a webhook secret file; real secrets are far smaller,
// and a larger file is a wrong path rather than a secret.
const maxSecretBytes = 64 << 10

// Router decides which webhooks receive an event. It is safe for
// concurrent use; SetConfig replaces its webhooks atomically, so a
// configuration reload never shows a half-applied table.
type Router struct {
	hooks atomic.Pointer[hookTable]
}

// hookTable is one configuration's webhooks, by URL and in order.
type hookTable struct {
	byURL map[string]*webhook
	list  []*webhook
}

// webhook is one configured receiver with its secret read.
type webhook struct {
	url    string
	name   string // for logs and stored errors: never the URL, which may hold a token
	secret []byte // nil: requests are not signed
	events map[string]bool
}

// NewRouter returns a Router for a's webhooks, reading their secret files.
func NewRouter(a config.Alerts) (*Router, error) {
	r := &Router{}
	if err := r.SetConfig(a); err != nil {
		return nil, err
	}
	return r, nil
}

// SetConfig replaces the webhooks with a's, reading their secret files
// again so that a rotated secret is used from now on. On an error the
// webhooks in force stay as they were. Deliveries already in the outbox
// follow the new table: a webhook still configured is sent its pending
// events (signed with its new secret), one that was removed has them
// dropped.
func (r *Router) SetConfig(a config.Alerts) error {
	t := &hookTable{byURL: make(map[string]*webhook, len(a.Webhooks))}
	for i, w := range a.Webhooks {
		key := fmt.Sprintf("alerts.webhooks[%d]", i)
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s.url: not an http or https URL", key)
		}
		if _, dup := t.byURL[w.URL]; dup {
			return fmt.Errorf("%s.url: listed twice; list each receiver once", key)
		}
		h := &webhook{url: w.URL, name: key + " (" + u.Host + ")", events: map[string]bool{}}
		events := w.Events
		if len(events) == 0 {
			events = config.EventTypes
		}
		for _, e := range events {
			h.events[e] = true
		}
		if w.SecretFile != "" {
			if h.secret, err = readSecret(w.SecretFile); err != nil {
				return fmt.Errorf("%s.secretFile: %w", key, err)
			}
		}
		t.byURL[w.URL] = h
		t.list = append(t.list, h)
	}
	r.hooks.Store(t)
	return nil
}

// Replace makes r route as next does. A reload builds next with NewRouter
// first, so that a secret it cannot read refuses the reload before anything
// else changes, then calls Replace once the reload goes ahead.
func (r *Router) Replace(next *Router) {
	r.hooks.Store(next.hooks.Load())
}

// Route returns one delivery per webhook subscribed to ev.Type, each due
// from ev.Time, for the store to queue with the change that caused ev. It
// does no I/O and is cheap: the gate calls it inside a state change.
func (r *Router) Route(ev metadata.Event) []metadata.Delivery {
	var out []metadata.Delivery
	for _, h := range r.hooks.Load().list {
		if h.events[ev.Type] {
			e := ev
			e.Reasons = slices.Clone(ev.Reasons)
			e.Tags = slices.Clone(ev.Tags)
			out = append(out, metadata.Delivery{Target: h.url, Event: e, NextAttempt: ev.Time})
		}
	}
	return out
}

// len is the number of webhooks configured.
func (r *Router) len() int { return len(r.hooks.Load().list) }

// webhook returns the webhook configured for target, if it still is.
func (r *Router) webhook(target string) (*webhook, bool) {
	h, ok := r.hooks.Load().byURL[target]
	return h, ok
}

// readSecret reads a secret file whole, without one trailing newline (the
// way editors and `kubectl create secret --from-file` leave it).
func readSecret(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("%w; check that the Secret is mounted", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(data) > maxSecretBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes; check that the path names the secret file", name, maxSecretBytes)
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	if len(data) == 0 {
		return nil, errors.New(name + " is empty; write the shared secret into it")
	}
	return data, nil
}
