package alerts

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Request headers a receiver reads.
const (
	// HeaderEvent is the event type, e.g. image.quarantined.
	HeaderEvent = "X-Airlock-Event"
	// HeaderDelivery is the event's id: the same on every attempt, so a
	// receiver can discard a repeat.
	HeaderDelivery = "X-Airlock-Delivery"
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256 of the body
	// under the webhook's secret; absent without a secretFile.
	HeaderSignature = "X-Airlock-Signature-256"
)

const (
	// maxErrorBody is how much of a refusal's body is kept for the log
	// and the outbox: enough for a receiver's error message.
	maxErrorBody = 256
	// maxDrain bounds what is read of a response body so that the
	// connection can be reused; a receiver sending more is cut off.
	maxDrain = 64 << 10
)

// Sign returns the X-Airlock-Signature-256 value for body under secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// post sends del's event to h once. Any answer but 2xx is an error.
func (d *Deliverer) post(ctx context.Context, h *webhook, del metadata.Delivery) error {
	body, err := json.Marshal(del.Event)
	if err != nil {
		return fmt.Errorf("encoding the event: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return errors.New("the webhook URL does not make a request; check its syntax")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", d.userAgent)
	req.Header.Set(HeaderEvent, del.Event.Type)
	req.Header.Set(HeaderDelivery, cmp.Or(del.Event.ID, strconv.FormatUint(del.Seq, 10)))
	if h.secret != nil {
		req.Header.Set(HeaderSignature, Sign(h.secret, body))
	}
	resp, err := d.client.Do(req)
	if err != nil {
		// url.Error repeats the URL, which may hold a token; keep the
		// cause alone.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %v", d.o.Timeout)
		}
		return err
	}
	defer resp.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return fmt.Errorf("HTTP %s, a redirect: airlock does not follow redirects with events; configure the URL the receiver answers on", resp.Status)
	}
	if msg := printable(head); msg != "" {
		return fmt.Errorf("HTTP %s: %s", resp.Status, msg)
	}
	return fmt.Errorf("HTTP %s", resp.Status)
}

// printable keeps a response excerpt fit for one log line.
func printable(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return ' '
		}
		return r
	}, string(b))
	return strings.Join(strings.Fields(s), " ")
}

func itoa(n int) string { return strconv.Itoa(n) }
