package console

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// maxReason is the longest reason the gate accepts.
const maxReason = 4096

func isAction(a string) bool {
	switch a {
	case "release", "block", "unblock", "rescan":
		return true
	}
	return false
}

type confirmData struct {
	Ref, URL, Action, Verb string
	Repository             string
	Digest                 digest.Digest
	Image                  metadata.Image
	Reason, Expires        string
	Until                  time.Time
}

func (d confirmData) title() string {
	return "Confirm: " + strings.ToLower(d.Verb) + " " + d.Repository + "@" + shortDigest(d.Digest)
}

// act checks an action's form; without confirm=yes it asks for
// confirmation, with it it carries the action out through the decider and
// shows the result on the image page.
func (c *Console) act(w http.ResponseWriter, r *http.Request, v *view, ref admin.Reference, action string) error {
	if err := c.parseForm(w, r); err != nil {
		return err
	}
	if !checkCSRF(r, v.sess.csrf) {
		c.log.LogAttrs(r.Context(), slog.LevelWarn, "console change refused: CSRF token missing or wrong",
			slog.String("actor", v.sess.cred.Actor), slog.String("action", action), slog.String("image", ref.String()))
		return errCSRF
	}
	form := formState{Action: action, Reason: strings.TrimSpace(r.PostFormValue("reason")),
		Expires: strings.TrimSpace(r.PostFormValue("expires"))}
	until, msg := c.checkForm(form)
	if msg != "" {
		form.Error = msg
		return c.showImage(w, r, v, ref, http.StatusBadRequest, form)
	}
	if r.PostFormValue("confirm") != "yes" {
		img, err := c.store.Image(r.Context(), ref.Repository, ref.Digest)
		if err != nil && action != "block" {
			return c.showImage(w, r, v, ref, http.StatusNotFound, form)
		}
		c.render(w, r, http.StatusOK, "confirm", v, confirmData{Ref: ref.String(), URL: imageURL(ref.Repository, ref.Digest),
			Repository: ref.Repository, Digest: ref.Digest,
			Action: action, Verb: actionVerb(action), Image: img, Reason: form.Reason, Expires: form.Expires, Until: until})
		return nil
	}
	actor := v.sess.cred.Actor
	img, err := c.apply(r, actor, action, ref, form.Reason, until)
	attrs := []slog.Attr{slog.String("actor", actor), slog.String("action", action),
		slog.String("repository", ref.Repository), slog.String("digest", ref.Digest.String()),
		slog.String("reason", form.Reason)}
	if err != nil {
		status, msg := admin.Describe(err)
		c.log.LogAttrs(r.Context(), slog.LevelWarn, "console change refused", append(attrs, slog.String("error", err.Error()))...)
		if status >= 500 {
			return err
		}
		form.Error = msg
		return c.showImage(w, r, v, ref, status, form)
	}
	if !until.IsZero() {
		attrs = append(attrs, slog.Time("expires", until))
	}
	c.log.LogAttrs(r.Context(), slog.LevelInfo, "console change", append(attrs, slog.String("state", string(img.State)))...)
	c.sessions.setFlash(v.sess, flash{OK: true, Text: result(action, img, until, actor)})
	http.Redirect(w, r, imageURL(ref.Repository, ref.Digest), http.StatusSeeOther)
	return nil
}

// checkForm checks an action's input as the API would; it returns the
// release's end and a message when the input is wrong.
func (c *Console) checkForm(f formState) (time.Time, string) {
	switch f.Action {
	case "release", "block", "unblock":
		if f.Reason == "" {
			return time.Time{}, actionVerb(f.Action) + " needs a reason: say why, for the audit log."
		}
		if len(f.Reason) > maxReason {
			return time.Time{}, "The reason is too long; keep it under 4096 bytes."
		}
	case "rescan":
		if f.Reason != "" {
			return time.Time{}, "Rescan takes no reason: it only runs the checks again."
		}
	}
	if f.Action != "release" {
		if f.Expires != "" {
			return time.Time{}, "Only a release expires; " + f.Action + " takes no expiry."
		}
		return time.Time{}, ""
	}
	until, err := admin.ParseExpiry(f.Expires, c.now())
	if err != nil {
		return time.Time{}, err.Error()
	}
	return until, ""
}

func (c *Console) apply(r *http.Request, actor, action string, ref admin.Reference, reason string, until time.Time) (metadata.Image, error) {
	ctx, repo, d := r.Context(), ref.Repository, ref.Digest
	switch action {
	case "release":
		return c.decider.Release(ctx, repo, d, actor, reason, until)
	case "block":
		return c.decider.Block(ctx, repo, d, actor, reason)
	case "unblock":
		return c.decider.Unblock(ctx, repo, d, actor, reason)
	}
	return c.decider.Rescan(ctx, repo, d, actor)
}

// result is the sentence a change's flash shows.
func result(action string, img metadata.Image, until time.Time, actor string) string {
	s := actionVerb(action) + " done: the image is now " + stateWord(img.State)
	if action == "release" {
		if until.IsZero() {
			s += ", with no end"
		} else {
			s += " until " + formatTime(until)
		}
	}
	return s + ". Recorded in the audit log as " + actor + "."
}
