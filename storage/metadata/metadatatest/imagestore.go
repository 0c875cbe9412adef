package metadatatest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// RunImageStore runs the conformance suite. open returns a new, empty
// store for one subtest and arranges its closing (t.Cleanup); subtests run
// in parallel, each on its own store.
func RunImageStore(t *testing.T, open func(t *testing.T) metadata.ImageStore) {
	tests := []struct {
		name string
		run  func(t *testing.T, s metadata.ImageStore)
	}{
		{"new image", testNewImage},
		{"state transitions write audit", testTransitions},
		{"no audit when nothing changed", testNoChange},
		{"fn error writes nothing", testFnError},
		{"invalid images are refused", testInvalid},
		{"audit chain verifies", testAuditChain},
		{"pagination and filters", testImages},
		{"each image", testEachImage},
		{"delete image", testDeleteImage},
		{"record pulls", testRecordPulls},
		{"deliveries queued with the change", testDeliveriesQueued},
		{"due deliveries order and backoff", testDueDeliveries},
		{"delivered and retry", testDeliveredRetry},
		{"concurrent updates", testConcurrent},
		{"cancelled context", testCancelled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, open(t))
		})
	}
}

// t0 is a fixed clock; the suite passes times explicitly.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func dig(s string) digest.Digest { return digest.FromString(s) }

// set returns an update that puts the image in state with reasons, as
// actor, under action.
func set(state metadata.State, actor, action string, reasons ...metadata.Reason) func(*metadata.Image) (metadata.Change, error) {
	return func(img *metadata.Image) (metadata.Change, error) {
		img.State = state
		img.Reasons = reasons
		img.Verdict = metadata.Verdict{State: state, Reasons: reasons}
		return metadata.Change{Actor: actor, Action: action, Reason: "set to " + string(state)}, nil
	}
}

func mustUpdate(t *testing.T, s metadata.ImageStore, repo string, d digest.Digest, now time.Time, fn func(*metadata.Image) (metadata.Change, error)) metadata.Image {
	t.Helper()
	img, err := s.UpdateImage(t.Context(), repo, d, now, fn)
	if err != nil {
		t.Fatalf("UpdateImage(%s@%s): %v", repo, d, err)
	}
	return img
}

func allAudit(t *testing.T, s metadata.ImageStore) []metadata.AuditRecord {
	t.Helper()
	var all []metadata.AuditRecord
	var after uint64
	for {
		page, err := s.Audit(t.Context(), after, 7)
		if err != nil {
			t.Fatalf("Audit(%d): %v", after, err)
		}
		if len(page) == 0 {
			return all
		}
		all = append(all, page...)
		after = page[len(page)-1].Seq
	}
}

func allDue(t *testing.T, s metadata.ImageStore, now time.Time) []metadata.Delivery {
	t.Helper()
	ds, err := s.DueDeliveries(t.Context(), now, 1000)
	if err != nil {
		t.Fatalf("DueDeliveries: %v", err)
	}
	return ds
}

func verifyOK(t *testing.T, s metadata.ImageStore, records uint64) metadata.AuditCheck {
	t.Helper()
	check, err := s.VerifyAudit(t.Context())
	if err != nil || !check.OK || check.Records != records {
		t.Fatalf("VerifyAudit = %+v, %v; want OK with %d records", check, err, records)
	}
	return check
}

func testNewImage(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	const repo = "dockerhub/library/nginx"
	d := dig("nginx")
	if _, err := s.Image(ctx, repo, d); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Image of an unknown image = %v, want ErrNotFound", err)
	}
	var seen metadata.Image
	got := mustUpdate(t, s, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		seen = *img
		img.State = metadata.StateApproved
		img.MediaType = "application/vnd.oci.image.index.v1+json"
		img.Tags = []string{"1.27", "latest"}
		img.Platforms = []metadata.Platform{{Digest: dig("amd64"), OS: "linux", Architecture: "amd64"}}
		return metadata.Change{Actor: "policy", Action: "decide"}, nil
	})
	if seen.Repository != repo || seen.Digest != d || !seen.FirstSeen.IsZero() || seen.State != metadata.StateNone {
		t.Errorf("fn saw %+v; want a new image named %s@%s with no state and a zero FirstSeen", seen, repo, d)
	}
	if !got.FirstSeen.Equal(t0) || !got.UpdatedAt.Equal(t0) || got.State != metadata.StateApproved {
		t.Errorf("UpdateImage = %+v; want approved, first seen and updated at %v", got, t0)
	}
	stored, err := s.Image(ctx, repo, d)
	if err != nil {
		t.Fatal(err)
	}
	if stored.State != metadata.StateApproved || !slices.Equal(stored.Tags, []string{"1.27", "latest"}) ||
		len(stored.Platforms) != 1 || stored.Platforms[0].Digest != dig("amd64") || stored.MediaType != got.MediaType {
		t.Errorf("Image = %+v; want what UpdateImage wrote", stored)
	}
	if stored.Reasons == nil || stored.Tags == nil {
		t.Errorf("Image has nil lists (reasons %v, tags %v): JSON clients expect arrays", stored.Reasons, stored.Tags)
	}
	if _, err := s.Image(ctx, "dockerhub/library/other", d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the image is visible in another repository: %v", err)
	}
	recs := allAudit(t, s)
	if len(recs) != 1 {
		t.Fatalf("audit after the first decision has %d records, want 1", len(recs))
	}
	r := recs[0]
	if r.Seq != 1 || r.From != metadata.StateNone || r.To != metadata.StateApproved || r.Actor != "policy" ||
		r.Action != "decide" || r.Repository != repo || r.Digest != d || !r.Time.Equal(t0) || r.Prev != "" {
		t.Errorf("first audit record = %+v", r)
	}
}

func testTransitions(t *testing.T, s metadata.ImageStore) {
	const repo = "hcl/vault"
	d := dig("vault")
	quarantine := metadata.Reason{Type: metadata.ReasonPolicy, Message: "digest not pinned for tag 1.18", Policy: "hcl-pinned", Tag: "1.18"}
	until := time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC)
	mustUpdate(t, s, repo, d, t0, set(metadata.StatePending, "policy", ""))
	mustUpdate(t, s, repo, d, t0.Add(time.Second), set(metadata.StateQuarantined, "policy", "decide", quarantine))
	img := mustUpdate(t, s, repo, d, t0.Add(2*time.Second), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateReleased
		img.Override = &metadata.Override{Action: metadata.ActionRelease, By: "admin:alice", Reason: "vendor hotfix", At: t0.Add(2 * time.Second), Expires: until}
		return metadata.Change{Actor: "admin:alice", Action: metadata.ActionRelease, Reason: "vendor hotfix", Expires: until}, nil
	})
	if !img.FirstSeen.Equal(t0) || !img.UpdatedAt.Equal(t0.Add(2*time.Second)) {
		t.Errorf("after three updates FirstSeen = %v, UpdatedAt = %v; want %v and %v", img.FirstSeen, img.UpdatedAt, t0, t0.Add(2*time.Second))
	}
	if img.Override == nil || !img.Override.Expires.Equal(until) || img.Override.By != "admin:alice" {
		t.Errorf("override = %+v; want alice's release until %v", img.Override, until)
	}
	if len(img.Verdict.Reasons) != 1 || img.Verdict.Reasons[0] != quarantine {
		t.Errorf("verdict = %+v; want the quarantine reason kept", img.Verdict)
	}
	recs := allAudit(t, s)
	want := []struct {
		from, to metadata.State
		actor    string
		action   string
	}{
		{metadata.StateNone, metadata.StatePending, "policy", ""},
		{metadata.StatePending, metadata.StateQuarantined, "policy", "decide"},
		{metadata.StateQuarantined, metadata.StateReleased, "admin:alice", metadata.ActionRelease},
	}
	if len(recs) != len(want) {
		t.Fatalf("audit has %d records, want %d: %+v", len(recs), len(want), recs)
	}
	prev := ""
	for i, w := range want {
		r := recs[i]
		if r.Seq != uint64(i+1) || r.From != w.from || r.To != w.to || r.Actor != w.actor || r.Action != w.action {
			t.Errorf("record %d = %+v; want %s -> %s by %s (%q)", i+1, r, w.from, w.to, w.actor, w.action)
		}
		if r.Prev != prev || r.Hash != metadata.AuditHash(r) || !strings.HasPrefix(r.Hash, "sha256:") {
			t.Errorf("record %d does not chain: prev %q (want %q), hash %q (computes %q)", i+1, r.Prev, prev, r.Hash, metadata.AuditHash(r))
		}
		prev = r.Hash
	}
	if q := recs[1]; len(q.Reasons) != 1 || q.Reasons[0] != quarantine || q.Reason != "set to quarantined" {
		t.Errorf("quarantine record = %+v; want its reasons and the change's reason", q)
	}
	if r := recs[2]; !r.Expires.Equal(until) || r.Reason != "vendor hotfix" {
		t.Errorf("release record = %+v; want the expiry %v and the admin's reason", r, until)
	}
	verifyOK(t, s, 3)
}

func testNoChange(t *testing.T, s metadata.ImageStore) {
	const repo = "quay/coreos/etcd"
	d := dig("etcd")
	mustUpdate(t, s, repo, d, t0, set(metadata.StateApproved, "policy", ""))
	img := mustUpdate(t, s, repo, d, t0.Add(time.Minute), func(img *metadata.Image) (metadata.Change, error) {
		img.Tags = append(img.Tags, "v3.5")
		return metadata.Change{Actor: "proxy"}, nil
	})
	if !slices.Equal(img.Tags, []string{"v3.5"}) || !img.UpdatedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("tag update = %+v", img)
	}
	if n := len(allAudit(t, s)); n != 1 {
		t.Fatalf("a change of tags alone wrote audit records: %d, want 1", n)
	}
	mustUpdate(t, s, repo, d, t0.Add(2*time.Minute), func(img *metadata.Image) (metadata.Change, error) {
		return metadata.Change{Actor: "admin:bob", Action: "rescan"}, nil
	})
	recs := allAudit(t, s)
	if len(recs) != 2 || recs[1].Action != "rescan" || recs[1].From != metadata.StateApproved || recs[1].To != metadata.StateApproved {
		t.Fatalf("an action without a state change must be audited: %+v", recs)
	}
	verifyOK(t, s, 2)
}

var errRefused = errors.New("refused by the test")

func testFnError(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	const repo = "ghcr/acme/api"
	d, fresh := dig("api"), dig("fresh")
	before := mustUpdate(t, s, repo, d, t0, set(metadata.StateApproved, "policy", ""))
	headBefore := verifyOK(t, s, 1).Head
	fail := func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateBlocked
		img.Tags = []string{"changed"}
		return metadata.Change{Actor: "admin:eve", Action: metadata.ActionBlock,
			Deliveries: []metadata.Delivery{{Target: "hook", Event: metadata.Event{Type: "image.blocked"}}}}, errRefused
	}
	for _, dd := range []digest.Digest{d, fresh} {
		if _, err := s.UpdateImage(ctx, repo, dd, t0.Add(time.Hour), fail); !errors.Is(err, errRefused) {
			t.Fatalf("UpdateImage with a failing fn = %v, want it to wrap the fn's error", err)
		}
	}
	after, err := s.Image(ctx, repo, d)
	if err != nil || after.State != before.State || !slices.Equal(after.Tags, before.Tags) || !after.UpdatedAt.Equal(before.UpdatedAt) {
		t.Errorf("image after a failed update = %+v, %v; want it unchanged (%+v)", after, err, before)
	}
	if _, err := s.Image(ctx, repo, fresh); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a failed update of a new image stored it: %v", err)
	}
	if check := verifyOK(t, s, 1); check.Head != headBefore {
		t.Errorf("a failed update moved the audit head")
	}
	if ds := allDue(t, s, t0.Add(48*time.Hour)); len(ds) != 0 {
		t.Errorf("a failed update queued deliveries: %+v", ds)
	}
}

func testInvalid(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	const repo = "dockerhub/library/redis"
	d := dig("redis")
	mustUpdate(t, s, repo, d, t0, set(metadata.StateApproved, "policy", ""))
	cases := []struct {
		name string
		fn   func(*metadata.Image) (metadata.Change, error)
	}{
		{"no state", set(metadata.StateNone, "policy", "decide")},
		{"unknown state", set("maybe", "policy", "decide")},
		{"unknown reason type", set(metadata.StateQuarantined, "policy", "decide", metadata.Reason{Type: "astrology", Message: "bad stars"})},
		{"renamed", func(img *metadata.Image) (metadata.Change, error) {
			img.Repository = "dockerhub/library/other"
			return metadata.Change{}, nil
		}},
		{"other digest", func(img *metadata.Image) (metadata.Change, error) {
			img.Digest = dig("other")
			return metadata.Change{}, nil
		}},
	}
	for _, c := range cases {
		if _, err := s.UpdateImage(ctx, repo, d, t0.Add(time.Hour), c.fn); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	if _, err := s.UpdateImage(ctx, repo, "sha256:nope", t0, set(metadata.StateApproved, "policy", "")); err == nil {
		t.Errorf("a malformed digest was accepted")
	}
	if _, err := s.UpdateImage(ctx, "", d, t0, set(metadata.StateApproved, "policy", "")); err == nil {
		t.Errorf("an empty repository was accepted")
	}
	img, err := s.Image(ctx, repo, d)
	if err != nil || img.State != metadata.StateApproved || !img.UpdatedAt.Equal(t0) {
		t.Errorf("image after refused updates = %+v, %v; want it unchanged", img, err)
	}
	verifyOK(t, s, 1)
}

func testAuditChain(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	check, err := s.VerifyAudit(ctx)
	if err != nil || !check.OK || check.Records != 0 || check.Head != "" {
		t.Fatalf("VerifyAudit of an empty log = %+v, %v; want OK with no records", check, err)
	}
	states := []metadata.State{metadata.StatePending, metadata.StateQuarantined, metadata.StateReleased, metadata.StateBlocked, metadata.StateApproved}
	for i := range 25 {
		repo := fmt.Sprintf("dockerhub/team/app%d", i%3)
		mustUpdate(t, s, repo, dig(repo), t0.Add(time.Duration(i)*time.Second), set(states[i%len(states)], "policy", "decide"))
	}
	recs := allAudit(t, s)
	if len(recs) != 25 {
		t.Fatalf("audit has %d records, want 25", len(recs))
	}
	check = verifyOK(t, s, 25)
	if check.Head != recs[24].Hash {
		t.Errorf("head %q is not the last record's hash %q", check.Head, recs[24].Hash)
	}
	page, err := s.Audit(ctx, 10, 5)
	if err != nil || len(page) != 5 || page[0].Seq != 11 || page[4].Seq != 15 {
		t.Errorf("Audit(10, 5) = %d records from %v, %v; want 11 to 15", len(page), page, err)
	}
	if page, err := s.Audit(ctx, 25, 5); err != nil || len(page) != 0 {
		t.Errorf("Audit past the end = %+v, %v; want nothing", page, err)
	}
	if page, err := s.Audit(ctx, math.MaxUint64, 5); err != nil || len(page) != 0 {
		t.Errorf("Audit after the largest seq = %d records, %v; want nothing", len(page), err)
	}
	if page, err := s.Audit(ctx, 0, 0); err != nil || len(page) != 25 {
		t.Errorf("Audit with limit 0 = %d records, %v; want the default page (all 25)", len(page), err)
	}
	// A record's hash covers every field: change one and it no longer
	// computes.
	r := recs[3]
	for name, edit := range map[string]func(*metadata.AuditRecord){
		"actor":  func(r *metadata.AuditRecord) { r.Actor = "admin:mallory" },
		"to":     func(r *metadata.AuditRecord) { r.To = metadata.StateApproved },
		"time":   func(r *metadata.AuditRecord) { r.Time = r.Time.Add(time.Nanosecond) },
		"reason": func(r *metadata.AuditRecord) { r.Reason += "." },
		"prev":   func(r *metadata.AuditRecord) { r.Prev = "" },
	} {
		e := r
		edit(&e)
		if metadata.AuditHash(e) == r.Hash {
			t.Errorf("editing the %s leaves the hash unchanged", name)
		}
	}
	if metadata.AuditHash(r) != metadata.AuditHash(func() metadata.AuditRecord { c := r; c.Time = c.Time.In(time.FixedZone("x", 3600)); return c }()) {
		t.Errorf("the hash depends on the time zone of the record's time")
	}
}

// seedImages writes images across upstreams, repositories and states and
// returns their keys in key order.
func seedImages(t *testing.T, s metadata.ImageStore) []string {
	var keys []string
	states := []metadata.State{metadata.StateApproved, metadata.StateQuarantined, metadata.StatePending}
	n := 0
	for _, repo := range []string{"dockerhub/library/nginx", "dockerhub/library/redis", "ghcr/acme/api", "hcl/vault", "hcl/vault-enterprise"} {
		for i := range 4 {
			d := dig(fmt.Sprintf("%s/%d", repo, i))
			mustUpdate(t, s, repo, d, t0, set(states[n%len(states)], "policy", ""))
			keys = append(keys, repo+"@"+string(d))
			n++
		}
	}
	slices.SortFunc(keys, func(a, b string) int {
		ra, da, _ := strings.Cut(a, "@")
		rb, db, _ := strings.Cut(b, "@")
		if c := strings.Compare(ra, rb); c != 0 {
			return c
		}
		return strings.Compare(da, db)
	})
	return keys
}

func listAll(t *testing.T, s metadata.ImageStore, q metadata.ImageQuery) []string {
	t.Helper()
	var got []string
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatalf("listing %+v does not end", q)
		}
		page, err := s.Images(t.Context(), q)
		if err != nil {
			t.Fatalf("Images(%+v): %v", q, err)
		}
		if q.Limit > 0 && len(page.Images) > q.Limit {
			t.Fatalf("Images(%+v) returned %d images, over the limit", q, len(page.Images))
		}
		for _, img := range page.Images {
			if q.State != "" && img.State != q.State {
				t.Errorf("state filter %q returned a %s image", q.State, img.State)
			}
			got = append(got, img.Repository+"@"+string(img.Digest))
		}
		if page.Next == "" {
			return got
		}
		if len(page.Images) == 0 {
			t.Fatalf("Images(%+v) returned an empty page with a cursor", q)
		}
		q.After = page.Next
	}
}

func testImages(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	keys := seedImages(t, s)
	filter := func(f func(key string, i int) bool) []string {
		var out []string
		for i, k := range keys {
			if f(k, i) {
				out = append(out, k)
			}
		}
		return out
	}
	stateOf := map[string]metadata.State{}
	err := s.EachImage(ctx, func(img metadata.Image) error {
		stateOf[img.Repository+"@"+string(img.Digest)] = img.State
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		q    metadata.ImageQuery
		want []string
	}{
		{"everything", metadata.ImageQuery{}, keys},
		{"pages of 3", metadata.ImageQuery{Limit: 3}, keys},
		{"pages of 1", metadata.ImageQuery{Limit: 1}, keys},
		{"exact page", metadata.ImageQuery{Limit: 20}, keys},
		{"upstream", metadata.ImageQuery{Upstream: "hcl", Limit: 3}, filter(func(k string, _ int) bool { return strings.HasPrefix(k, "hcl/") })},
		{"repository", metadata.ImageQuery{Repository: "hcl/vault", Limit: 3}, filter(func(k string, _ int) bool { return strings.HasPrefix(k, "hcl/vault@") })},
		{"repository and upstream", metadata.ImageQuery{Repository: "hcl/vault", Upstream: "hcl"}, filter(func(k string, _ int) bool { return strings.HasPrefix(k, "hcl/vault@") })},
		{"repository of another upstream", metadata.ImageQuery{Repository: "hcl/vault", Upstream: "dockerhub"}, nil},
		{"unknown upstream", metadata.ImageQuery{Upstream: "hc"}, nil},
		{"state", metadata.ImageQuery{State: metadata.StateQuarantined, Limit: 2}, filter(func(k string, _ int) bool { return stateOf[k] == metadata.StateQuarantined })},
		{"state and upstream", metadata.ImageQuery{State: metadata.StatePending, Upstream: "dockerhub", Limit: 1},
			filter(func(k string, _ int) bool {
				return stateOf[k] == metadata.StatePending && strings.HasPrefix(k, "dockerhub/")
			})},
		{"state nobody has", metadata.ImageQuery{State: metadata.StateBlocked}, nil},
	}
	for _, c := range cases {
		if got := listAll(t, s, c.q); !slices.Equal(got, c.want) {
			t.Errorf("%s: got %d images %v, want %d %v", c.name, len(got), got, len(c.want), c.want)
		}
	}
	page, err := s.Images(ctx, metadata.ImageQuery{Limit: 20})
	if err != nil || page.Next != "" || len(page.Images) != 20 {
		t.Errorf("a page holding exactly the rest = %d images, next %q, %v; want 20 and no cursor", len(page.Images), page.Next, err)
	}
	if _, err := s.Images(ctx, metadata.ImageQuery{State: "maybe"}); err == nil {
		t.Errorf("Images with an unknown state was accepted")
	}
	if _, err := s.Images(ctx, metadata.ImageQuery{After: "not a cursor!"}); err == nil {
		t.Errorf("Images with a cursor the store never returned was accepted")
	}
}

func testEachImage(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	keys := seedImages(t, s)
	var got []string
	err := s.EachImage(ctx, func(img metadata.Image) error {
		got = append(got, img.Repository+"@"+string(img.Digest))
		return nil
	})
	if err != nil || !slices.Equal(got, keys) {
		t.Fatalf("EachImage = %v, %v; want every image in key order %v", got, err, keys)
	}
	n := 0
	err = s.EachImage(ctx, func(metadata.Image) error {
		if n++; n == 3 {
			return errRefused
		}
		return nil
	})
	if !errors.Is(err, errRefused) || n != 3 {
		t.Errorf("EachImage after fn failed = %v after %d calls; want fn's error after 3", err, n)
	}
}

func testDeleteImage(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	const repo = "dockerhub/library/busybox"
	d := dig("busybox")
	reason := metadata.Reason{Type: metadata.ReasonManual, Message: "pulled by mistake", Actor: "admin:alice"}
	mustUpdate(t, s, repo, d, t0, set(metadata.StateBlocked, "admin:alice", metadata.ActionBlock, reason))
	err := s.DeleteImage(ctx, repo, d, t0.Add(time.Hour), metadata.Change{Actor: "admin:alice", Action: "delete", Reason: "free the space",
		Deliveries: []metadata.Delivery{{Target: "hook", Event: metadata.Event{Type: "image.deleted", Repository: repo, Digest: d}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image(ctx, repo, d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Image after DeleteImage = %v, want ErrNotFound", err)
	}
	recs := allAudit(t, s)
	if len(recs) != 2 {
		t.Fatalf("audit after delete has %d records, want 2", len(recs))
	}
	if r := recs[1]; r.From != metadata.StateBlocked || r.To != metadata.StateNone || r.Action != "delete" ||
		r.Actor != "admin:alice" || r.Reason != "free the space" || !r.Time.Equal(t0.Add(time.Hour)) {
		t.Errorf("delete record = %+v", r)
	}
	check := verifyOK(t, s, 2)
	ds := allDue(t, s, t0.Add(time.Hour))
	if len(ds) != 1 || ds[0].Event.Audit != check.Head {
		t.Errorf("delete deliveries = %+v; want one carrying the delete record's hash", ds)
	}
	if err := s.DeleteImage(ctx, repo, d, t0, metadata.Change{Actor: "admin:alice"}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("DeleteImage of an unknown image = %v, want ErrNotFound", err)
	}
	verifyOK(t, s, 2)
	// The image can come back; it is new again.
	img := mustUpdate(t, s, repo, d, t0.Add(2*time.Hour), set(metadata.StateApproved, "policy", ""))
	if !img.FirstSeen.Equal(t0.Add(2 * time.Hour)) {
		t.Errorf("an image pulled again after delete kept FirstSeen %v", img.FirstSeen)
	}
}

func testRecordPulls(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	const repo = "dockerhub/library/alpine"
	d := dig("alpine")
	arm, amd := dig("arm64"), dig("amd64")
	mustUpdate(t, s, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateApproved
		img.Platforms = []metadata.Platform{{Digest: amd, Architecture: "amd64"}, {Digest: arm, Architecture: "arm64"}}
		return metadata.Change{Actor: "policy"}, nil
	})
	late, early := t0.Add(2*time.Hour), t0.Add(time.Hour)
	err := s.RecordPulls(ctx, []metadata.PullStat{
		{Repository: repo, Digest: d, Pulls: 3, Last: late, Platforms: []digest.Digest{amd}},
		{Repository: "dockerhub/library/unknown", Digest: d, Pulls: 9, Last: late},
		{Repository: repo, Digest: d, Pulls: 2, Last: early},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Image(ctx, repo, d)
	if err != nil {
		t.Fatal(err)
	}
	if img.Pulls != 5 || !img.LastPulled.Equal(late) || !img.Platforms[0].Fetched || img.Platforms[1].Fetched {
		t.Errorf("after pulls: %d pulls, last %v, platforms %+v; want 5, %v, amd64 fetched only", img.Pulls, img.LastPulled, img.Platforms, late)
	}
	if _, err := s.Image(ctx, "dockerhub/library/unknown", d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("RecordPulls created an unknown image: %v", err)
	}
	if err := s.RecordPulls(ctx, []metadata.PullStat{{Repository: repo, Digest: d, Pulls: 1, Last: early, Platforms: []digest.Digest{arm}}}); err != nil {
		t.Fatal(err)
	}
	img, _ = s.Image(ctx, repo, d)
	if img.Pulls != 6 || !img.LastPulled.Equal(late) || !img.Platforms[1].Fetched || !img.Platforms[0].Fetched {
		t.Errorf("after a second flush: %+v; want 6 pulls, last still %v, both platforms fetched", img, late)
	}
	if err := s.RecordPulls(ctx, nil); err != nil {
		t.Errorf("RecordPulls of nothing: %v", err)
	}
	verifyOK(t, s, 1)
}

func testDeliveriesQueued(t *testing.T, s metadata.ImageStore) {
	const repo = "hcl/consul"
	d := dig("consul")
	ev := metadata.Event{Type: "image.quarantined", Repository: repo, Digest: d, State: metadata.StateQuarantined}
	mustUpdate(t, s, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		img.Reasons = []metadata.Reason{{Type: metadata.ReasonPolicy, Message: "not pinned", Policy: "hcl-pinned"}}
		return metadata.Change{Actor: "policy", Action: "decide",
			Deliveries: []metadata.Delivery{{Target: "ops", Event: ev}, {Target: "sec", Event: ev}}}, nil
	})
	head := verifyOK(t, s, 1).Head
	// A change with deliveries but no audit record leaves Event.Audit empty.
	mustUpdate(t, s, repo, d, t0.Add(time.Minute), func(img *metadata.Image) (metadata.Change, error) {
		return metadata.Change{Deliveries: []metadata.Delivery{{Target: "ops", Event: metadata.Event{Type: "scan.failed"}}}}, nil
	})
	verifyOK(t, s, 1)
	ds := allDue(t, s, t0.Add(time.Minute))
	if len(ds) != 3 {
		t.Fatalf("outbox holds %d deliveries, want 3: %+v", len(ds), ds)
	}
	ids := map[string]bool{}
	for i, dl := range ds {
		if dl.Seq == 0 || (i > 0 && dl.Seq <= ds[i-1].Seq) {
			t.Errorf("delivery %d has seq %d; want increasing seqs from 1", i, dl.Seq)
		}
		if !strings.HasSuffix(dl.Event.ID, fmt.Sprintf("-%d", dl.Seq)) || len(dl.Event.ID) < 3 || ids[dl.Event.ID] {
			t.Errorf("delivery %d has event ID %q; want a unique \"<store>-%d\"", i, dl.Event.ID, dl.Seq)
		}
		ids[dl.Event.ID] = true
		if dl.Attempts != 0 || dl.LastError != "" {
			t.Errorf("new delivery %d = %+v; want no attempts yet", i, dl)
		}
	}
	for i, dl := range ds[:2] {
		if dl.Event.Audit != head || dl.Event.Type != "image.quarantined" || dl.Event.Repository != repo || !dl.NextAttempt.Equal(t0) || !dl.Event.Time.Equal(t0) {
			t.Errorf("delivery %d = %+v; want the event with the audit head %q, due and dated %v", i, dl, head, t0)
		}
	}
	if ds[0].Target != "ops" || ds[1].Target != "sec" {
		t.Errorf("targets %q, %q; want ops then sec", ds[0].Target, ds[1].Target)
	}
	if ds[2].Event.Audit != "" || !ds[2].NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Errorf("delivery without an audit record = %+v; want no audit hash, due at the change", ds[2])
	}
}

func testDueDeliveries(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	const repo = "dockerhub/library/postgres"
	d := dig("postgres")
	later := t0.Add(10 * time.Minute)
	mustUpdate(t, s, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateBlocked
		var ds []metadata.Delivery
		for i := range 5 {
			dl := metadata.Delivery{Target: fmt.Sprintf("t%d", i), Event: metadata.Event{Type: "image.blocked"}}
			if i%2 == 1 {
				dl.NextAttempt = later
			}
			ds = append(ds, dl)
		}
		return metadata.Change{Actor: "admin:alice", Action: metadata.ActionBlock, Deliveries: ds}, nil
	})
	targets := func(ds []metadata.Delivery) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.Target)
		}
		return out
	}
	if got := targets(allDue(t, s, t0.Add(-time.Second))); len(got) != 0 {
		t.Errorf("due before their time: %v", got)
	}
	if got := targets(allDue(t, s, t0)); !slices.Equal(got, []string{"t0", "t2", "t4"}) {
		t.Errorf("due at t0: %v; want t0, t2, t4 (oldest first, the delayed ones held back)", got)
	}
	if got := targets(allDue(t, s, later)); !slices.Equal(got, []string{"t0", "t1", "t2", "t3", "t4"}) {
		t.Errorf("due later: %v; want all five in order", got)
	}
	ds, err := s.DueDeliveries(ctx, later, 2)
	if err != nil || !slices.Equal(targets(ds), []string{"t0", "t1"}) {
		t.Errorf("DueDeliveries with limit 2 = %v, %v; want the two oldest", targets(ds), err)
	}

	// A target with many pending cannot fill an answer bounded per target.
	mustUpdate(t, s, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		var ds []metadata.Delivery
		for range 4 {
			ds = append(ds, metadata.Delivery{Target: "t0", Event: metadata.Event{Type: "image.blocked"}})
		}
		return metadata.Change{Actor: "admin:alice", Action: "rescan", Deliveries: ds}, nil
	})
	ds, err = s.DueDeliveriesPerTarget(ctx, later, 2, 5)
	if err != nil || !slices.Equal(targets(ds), []string{"t0", "t1", "t2", "t3", "t4"}) {
		t.Errorf("DueDeliveriesPerTarget(2, 5) = %v, %v; want one of t0's beside every other target", targets(ds), err)
	}
	ds, err = s.DueDeliveriesPerTarget(ctx, later, 2, 100)
	if err != nil || !slices.Equal(targets(ds), []string{"t0", "t1", "t2", "t3", "t4", "t0"}) {
		t.Errorf("DueDeliveriesPerTarget(2, 100) = %v, %v; want at most two of t0's, oldest first", targets(ds), err)
	}
	if ds, err = s.DueDeliveriesPerTarget(ctx, later, 0, 100); err != nil || len(ds) != 9 {
		t.Errorf("DueDeliveriesPerTarget without a bound = %d, %v; want all 9", len(ds), err)
	}
}

func testDeliveredRetry(t *testing.T, s metadata.ImageStore) {
	ctx := t.Context()
	const repo = "dockerhub/library/mysql"
	d := dig("mysql")
	mustUpdate(t, s, repo, d, t0, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		return metadata.Change{Actor: "policy", Deliveries: []metadata.Delivery{
			{Target: "a", Event: metadata.Event{Type: "image.quarantined"}},
			{Target: "b", Event: metadata.Event{Type: "image.quarantined"}},
		}}, nil
	})
	ds := allDue(t, s, t0)
	if len(ds) != 2 {
		t.Fatalf("outbox holds %d, want 2", len(ds))
	}
	a, b := ds[0], ds[1]
	if err := s.Delivered(ctx, a.Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Delivered(ctx, a.Seq); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Delivered twice = %v, want ErrNotFound", err)
	}
	backoff := t0.Add(30 * time.Second)
	if err := s.RetryDelivery(ctx, b.Seq, backoff, "connection refused"); err != nil {
		t.Fatal(err)
	}
	if due := allDue(t, s, t0.Add(29*time.Second)); len(due) != 0 {
		t.Errorf("a delivery backed off until %v is due early: %+v", backoff, due)
	}
	due := allDue(t, s, backoff)
	if len(due) != 1 || due[0].Seq != b.Seq || due[0].Attempts != 1 || due[0].LastError != "connection refused" ||
		!due[0].NextAttempt.Equal(backoff) || due[0].Event.ID != b.Event.ID || due[0].Target != "b" {
		t.Fatalf("after a failed attempt: %+v; want b with 1 attempt, its error, due at %v", due, backoff)
	}
	if err := s.RetryDelivery(ctx, b.Seq, backoff.Add(time.Minute), "503 Service Unavailable"); err != nil {
		t.Fatal(err)
	}
	if due := allDue(t, s, backoff.Add(time.Minute)); len(due) != 1 || due[0].Attempts != 2 || due[0].LastError != "503 Service Unavailable" {
		t.Errorf("after a second failure: %+v; want 2 attempts and the latest error", due)
	}
	if err := s.RetryDelivery(ctx, a.Seq, backoff, "x"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("RetryDelivery of a delivered event = %v, want ErrNotFound", err)
	}
	if err := s.Delivered(ctx, b.Seq); err != nil {
		t.Fatal(err)
	}
	if due := allDue(t, s, backoff.Add(time.Hour)); len(due) != 0 {
		t.Errorf("outbox not empty after both were delivered: %+v", due)
	}
	// Seqs are never reused, so event IDs stay unique.
	mustUpdate(t, s, repo, d, t0.Add(time.Hour), func(img *metadata.Image) (metadata.Change, error) {
		return metadata.Change{Deliveries: []metadata.Delivery{{Target: "a", Event: metadata.Event{Type: "scan.failed"}}}}, nil
	})
	if due := allDue(t, s, t0.Add(time.Hour)); len(due) != 1 || due[0].Seq <= b.Seq || due[0].Event.ID == a.Event.ID || due[0].Event.ID == b.Event.ID {
		t.Errorf("a delivery after the outbox emptied = %+v; want a new seq and ID", due)
	}
}

func testConcurrent(t *testing.T, s metadata.ImageStore) {
	const workers, rounds = 8, 15
	states := []metadata.State{metadata.StatePending, metadata.StateQuarantined, metadata.StateReleased, metadata.StateApproved, metadata.StateBlocked}
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				repo := fmt.Sprintf("dockerhub/team/app%d", (w+i)%4)
				_, err := s.UpdateImage(t.Context(), repo, dig(repo), t0.Add(time.Duration(i)*time.Millisecond), func(img *metadata.Image) (metadata.Change, error) {
					img.State = states[(w+i)%len(states)]
					return metadata.Change{Actor: fmt.Sprintf("worker:%d", w), Action: "decide",
						Deliveries: []metadata.Delivery{{Target: "ops", Event: metadata.Event{Type: "image.changed"}}}}, nil
				})
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recs := allAudit(t, s)
	if len(recs) != workers*rounds {
		t.Fatalf("audit has %d records, want one per update (%d)", len(recs), workers*rounds)
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d: seqs are not contiguous", i+1, r.Seq)
		}
	}
	verifyOK(t, s, workers*rounds)
	// Each image's last record is its state, and each record's From is
	// the To of the image's record before it: updates never interleaved.
	last := map[string]metadata.State{}
	for _, r := range recs {
		if r.From != last[r.Repository] {
			t.Errorf("record %d goes from %q but %s was %q", r.Seq, r.From, r.Repository, last[r.Repository])
		}
		last[r.Repository] = r.To
	}
	for repo, st := range last {
		img, err := s.Image(t.Context(), repo, dig(repo))
		if err != nil || img.State != st {
			t.Errorf("%s is %q (%v) but its last audit record says %q", repo, img.State, err, st)
		}
	}
	ds := allDue(t, s, t0.Add(time.Hour))
	if len(ds) != workers*rounds {
		t.Fatalf("outbox holds %d deliveries, want %d", len(ds), workers*rounds)
	}
	hashes := map[string]bool{}
	for _, r := range recs {
		hashes[r.Hash] = true
	}
	ids := map[string]bool{}
	for _, dl := range ds {
		if !hashes[dl.Event.Audit] || ids[dl.Event.ID] {
			t.Errorf("delivery %d: audit %q, ID %q; want a record's hash and a unique ID", dl.Seq, dl.Event.Audit, dl.Event.ID)
		}
		ids[dl.Event.ID] = true
	}
}

func testCancelled(t *testing.T, s metadata.ImageStore) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	d := dig("x")
	if _, err := s.UpdateImage(ctx, "a/b", d, t0, set(metadata.StateApproved, "policy", "")); !errors.Is(err, context.Canceled) {
		t.Errorf("UpdateImage with a cancelled context = %v", err)
	}
	if _, err := s.Image(ctx, "a/b", d); !errors.Is(err, context.Canceled) {
		t.Errorf("Image with a cancelled context = %v", err)
	}
	if _, err := s.Image(t.Context(), "a/b", d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("an update with a cancelled context wrote the image: %v", err)
	}
}
