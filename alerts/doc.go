// Package alerts sends the gate's state changes (an image quarantined,
// blocked, released, a release expired, a scan failed) to webhooks.
//
// Delivery goes through the persistent outbox of the image store. The gate
// asks a [Router] which webhooks want an event and hands the resulting
// deliveries to the store with the state change itself, so a change and its
// alerts are written in one transaction: an alert is never sent for a change
// that did not happen, nor lost for one that did. A [Deliverer] then reads
// the outbox apart from any pull, POSTs each event and removes it once the
// receiver answered 2xx.
//
// Guarantees:
//   - At least once: a delivery leaves the outbox only after a 2xx answer,
//     or when it is given up. A crash between the answer and the removal
//     sends it again; receivers deduplicate on X-Airlock-Delivery, the
//     event's id.
//   - Everything pending is in the store, so a restart resumes where the
//     previous process stopped.
//   - A failed delivery is retried with exponential backoff and jitter
//     (2s doubling to 10m by default) and given up, logged at ERROR and
//     counted as dropped, once its event is older than MaxAge (24h) or it
//     failed MaxAttempts times. A delivery whose webhook is no longer
//     configured is dropped, with a log line, at its next attempt.
//   - Each webhook has its own worker and receives its events one at a
//     time in the order of the changes: a slow or failing receiver delays
//     only its own events. While its oldest event waits for a retry, the
//     others wait behind it, so a receiver sees events in order (across
//     restarts too) and one that is down is asked once per backoff step,
//     not once per event.
//   - Each request has a timeout (10s); redirects are not followed (a
//     webhook URL must be the receiver's exact address) and count as
//     failures; response bodies are read to a bound and discarded.
//   - With a secretFile, each request carries X-Airlock-Signature-256:
//     sha256=<hex HMAC-SHA256 of the exact body bytes>, GitHub's scheme, so
//     a receiver can check that the event came from airlock.
//
// Webhook URLs can carry credentials in their path or query (Slack, Teams),
// so logs and stored errors name a webhook by its place in the
// configuration and its host, never by its URL.
package alerts
