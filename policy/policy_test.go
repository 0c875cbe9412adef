package policy

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

var (
	dA = digest.FromString("a")
	dB = digest.FromString("b")
	dC = digest.FromString("c")
)

func compile(t *testing.T, pols []config.Policy, files map[string]string) *Set {
	t.Helper()
	s, err := Compile(pols, func(path string) ([]byte, error) {
		if data, ok := files[path]; ok {
			return []byte(data), nil
		}
		return nil, os.ErrNotExist
	}, func(name string, c config.Signature) (SignatureCheck, error) { return hashCheck(c.TrustedRoot), nil })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hashCheck stands for a compiled signature check: evaluation only reads
// its hash.
type hashCheck string

func (h hashCheck) Hash() string { return string(h) }

func TestEvaluatePins(t *testing.T) {
	t.Parallel()
	pins := "# vendor releases\n" + dA.String() + "\n\nhcl/app:1.0 " + dB.String() + "\nhcl/app:1.0 " + dA.String() + "\n  hcl/other:2 " + dC.String() + "  \n"
	set := compile(t, []config.Policy{
		{Name: "hcl-pinned", Match: []string{"hcl/*"}, Mode: config.ModeEnforce, Pins: "/pins"},
		{Name: "watch", Match: []string{"hub/library/*"}, Mode: config.ModeAudit, Pins: "/empty"},
	}, map[string]string{"/pins": pins, "/empty": ""})
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		sub      Subject
		state    metadata.State
		reason   string
		tag      string
		policies []string
	}{
		{"bare pin, by digest", Subject{Repository: "hcl/app", Digest: dA, Tags: nil}, metadata.StateApproved, "", "", []string{"hcl-pinned"}},
		{"bare pin, any repository", Subject{Repository: "hcl/team/x", Digest: dA, Tags: []string{"7"}}, metadata.StateApproved, "", "", []string{"hcl-pinned"}},
		{"tag pin matches", Subject{Repository: "hcl/app", Digest: dB, Tags: []string{"1.0"}}, metadata.StateApproved, "", "", []string{"hcl-pinned"}},
		{"second pin of a tag", Subject{Repository: "hcl/app", Digest: dA, Tags: []string{"1.0"}}, metadata.StateApproved, "", "", []string{"hcl-pinned"}},
		{"pinned for the repository through another tag", Subject{Repository: "hcl/app", Digest: dB, Tags: []string{"2.0"}}, metadata.StateApproved, "", "", []string{"hcl-pinned"}},
		{"tag pinned elsewhere", Subject{Repository: "hcl/other", Digest: dB, Tags: []string{"2"}}, metadata.StateQuarantined,
			"policy hcl-pinned: tag 2 resolved to " + dB.String()[:19] + ", but the pins allow it only " + dC.String()[:19], "2", []string{"hcl-pinned"}},
		{"pinned in another repository only", Subject{Repository: "hcl/x", Digest: dC, Tags: nil}, metadata.StateQuarantined,
			"policy hcl-pinned: " + dC.String()[:19] + " is not pinned", "", []string{"hcl-pinned"}},
		{"unpinned by tag", Subject{Repository: "hcl/x", Digest: dC, Tags: []string{"latest"}}, metadata.StateQuarantined,
			"policy hcl-pinned: tag latest resolved to " + dC.String()[:19] + ", which is not pinned", "latest", []string{"hcl-pinned"}},
		{"audit mode records and approves", Subject{Repository: "hub/library/nginx", Digest: dA, Tags: []string{"1"}}, metadata.StateApproved,
			"policy watch: tag 1 resolved to " + dA.String()[:19] + ", which is not pinned", "1", []string{"watch"}},
		{"no policy matches", Subject{Repository: "quay/x", Digest: dC, Tags: nil}, metadata.StateApproved, "", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := set.Evaluate(tc.sub, now)
			if v.State != tc.state || !v.DecidedAt.Equal(now) {
				t.Errorf("state = %s at %v, want %s", v.State, v.DecidedAt, tc.state)
			}
			if strings.Join(v.Policies, ",") != strings.Join(tc.policies, ",") {
				t.Errorf("policies = %v, want %v", v.Policies, tc.policies)
			}
			if tc.reason == "" {
				if len(v.Reasons) != 0 {
					t.Errorf("reasons = %+v, want none", v.Reasons)
				}
				return
			}
			if len(v.Reasons) != 1 || v.Reasons[0].Message != tc.reason || v.Reasons[0].Tag != tc.tag || v.Reasons[0].Type != metadata.ReasonPolicy {
				t.Fatalf("reasons = %+v, want one policy reason %q (tag %q)", v.Reasons, tc.reason, tc.tag)
			}
			if audit := v.Reasons[0].Mode == config.ModeAudit; audit != (tc.state == metadata.StateApproved) {
				t.Errorf("reason mode = %q", v.Reasons[0].Mode)
			}
		})
	}
}

func TestEveryMatchingPolicyMustPass(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{
		{Name: "first", Match: []string{"hcl/*"}, Pins: "/1"},
		{Name: "second", Match: []string{"hcl/app"}, Pins: "/2"},
	}, map[string]string{"/1": dA.String() + "\n" + dB.String(), "/2": dA.String()})
	if v := set.Evaluate(Subject{Repository: "hcl/app", Digest: dA}, time.Now()); v.State != metadata.StateApproved {
		t.Errorf("pinned by both: %s %+v", v.State, v.Reasons)
	}
	v := set.Evaluate(Subject{Repository: "hcl/app", Digest: dB}, time.Now())
	if v.State != metadata.StateQuarantined || len(v.Reasons) != 1 || v.Reasons[0].Policy != "second" {
		t.Errorf("pinned by one of two: %s %+v", v.State, v.Reasons)
	}
	if !set.Governs("hcl/a/b") || set.Governs("hclx/a") || set.Governs("dockerhub/hcl/a") {
		t.Error("Governs disagrees with the globs")
	}
	var none *Set
	if none.Governs("x/y") || none.Evaluate(Subject{Repository: "x/y", Digest: dA}, time.Now()).State != metadata.StateApproved {
		t.Error("a nil Set must approve everything")
	}
}

func TestParsePinsErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ data, want string }{
		{"sha256:abc\n", "pins:1: \"sha256:abc\" is not a digest"},
		{"\n\nhcl/app " + dA.String(), "pins:3: \"hcl/app\" is not <upstream>/<repository>:<tag>"},
		{"app:1 " + dA.String(), "pins:1: \"app:1\" is not <upstream>/<repository>:<tag>"},
		{dA.String() + " " + dB.String() + " x", "pins:1: want"},
		{strings.Repeat("x", 5000), "lines are at most"},
	} {
		if _, err := ParsePins("pins", []byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePins(%.30q) = %v, want %q", tc.data, err, tc.want)
		}
	}
	_, err := Compile([]config.Policy{{Name: "p", Match: []string{"x/*"}, Pins: "/missing"}},
		func(string) ([]byte, error) { return nil, os.ErrNotExist }, nil)
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "policies[0] (p)") {
		t.Errorf("missing pin file: %v", err)
	}
}

func TestGlob(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		glob, repo string
		want       bool
	}{
		{"hcl/*", "hcl/app", true}, {"hcl/*", "hcl/team/app", true}, {"hcl/*", "hcl", false},
		{"dockerhub/library/*", "dockerhub/library/nginx", true}, {"dockerhub/library/*", "dockerhub/bitnami/nginx", false},
		{"quay/metallb/?peaker", "quay/metallb/speaker", true}, {"a.b/c", "a.b/c", true}, {"a.b/c", "axb/c", false},
		{"*", "anything/at/all", true},
	} {
		re, err := Glob(tc.glob)
		if err != nil {
			t.Fatal(err)
		}
		if got := re.MatchString(tc.repo); got != tc.want {
			t.Errorf("Glob(%q) on %q = %v, want %v", tc.glob, tc.repo, got, tc.want)
		}
	}
}

func TestEffective(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	q := metadata.Verdict{State: metadata.StateQuarantined, Reasons: []metadata.Reason{{Type: metadata.ReasonPolicy, Message: "not pinned"}}}
	ok := metadata.Verdict{State: metadata.StateApproved}
	release := func(exp time.Time) *metadata.Override {
		return &metadata.Override{Action: metadata.ActionRelease, By: "admin:ann", Reason: "vendor hotfix", Expires: exp}
	}
	block := &metadata.Override{Action: metadata.ActionBlock, By: "admin:bob", Reason: "incident 42"}
	for _, tc := range []struct {
		name    string
		v       metadata.Verdict
		o       *metadata.Override
		want    metadata.State
		reasons int
	}{
		{"verdict stands", q, nil, metadata.StateQuarantined, 1},
		{"release without end", q, release(time.Time{}), metadata.StateReleased, 2},
		{"release before its end", q, release(now.Add(time.Second)), metadata.StateReleased, 2},
		{"release at its end", q, release(now), metadata.StateQuarantined, 1},
		{"release of an approved image is moot", ok, release(time.Time{}), metadata.StateApproved, 0},
		{"block wins over approval", ok, block, metadata.StateBlocked, 1},
		{"block wins over quarantine", q, block, metadata.StateBlocked, 2},
		{"no verdict yet", metadata.Verdict{}, nil, metadata.StatePending, 0},
		{"release of a pending image", metadata.Verdict{State: metadata.StatePending}, release(time.Time{}), metadata.StateReleased, 1},
	} {
		st, rs := Effective(tc.v, tc.o, now)
		if st != tc.want || len(rs) != tc.reasons {
			t.Errorf("%s: Effective = %s with %d reasons %+v, want %s with %d", tc.name, st, len(rs), rs, tc.want, tc.reasons)
		}
		if tc.o != nil && st == tc.want && (st == metadata.StateBlocked || st == metadata.StateReleased) &&
			(rs[0].Type != metadata.ReasonManual || !strings.Contains(rs[0].Message, tc.o.Reason) || rs[0].Actor != tc.o.By) {
			t.Errorf("%s: first reason %+v, want the manual one", tc.name, rs[0])
		}
	}
}

func TestEvaluateSignatures(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{
		{Name: "signed", Match: []string{"quay/*"}, Mode: config.ModeEnforce, Signature: &config.Signature{TrustedRoot: "root-v1"}},
		{Name: "watched", Match: []string{"quay/watched/*"}, Mode: config.ModeAudit, Signature: &config.Signature{TrustedRoot: "root-w"}},
	}, nil)
	now := time.Now()
	ok := metadata.SignatureEvidence{Policy: "signed", Hash: "root-v1", Verified: true, Kind: "key", KeyID: "sha256:ab", Message: "verified"}
	bad := metadata.SignatureEvidence{Policy: "signed", Hash: "root-v1", Message: "no signature found", Identity: "https://github.com/evil"}
	stale := ok
	stale.Hash = "root-v0"
	for _, tc := range []struct {
		name   string
		repo   string
		evs    []metadata.SignatureEvidence
		state  metadata.State
		reason string
	}{
		{"verified", "quay/app", []metadata.SignatureEvidence{ok}, metadata.StateApproved, ""},
		{"not verified", "quay/app", []metadata.SignatureEvidence{bad}, metadata.StateQuarantined, "policy signed: no signature found"},
		{"not checked yet", "quay/app", nil, metadata.StatePending, ""},
		{"checked under other trust", "quay/app", []metadata.SignatureEvidence{stale}, metadata.StatePending, ""},
		{"audit policy without evidence does not hold the image", "quay/watched/x", []metadata.SignatureEvidence{ok}, metadata.StateApproved, ""},
		{"other policy's evidence does not count", "quay/app", []metadata.SignatureEvidence{{Policy: "watched", Hash: "root-v1", Verified: true}}, metadata.StatePending, ""},
	} {
		v := set.Evaluate(Subject{Repository: tc.repo, Digest: dA, Signatures: tc.evs}, now)
		if v.State != tc.state {
			t.Errorf("%s: state %s, want %s (%+v)", tc.name, v.State, tc.state, v.Reasons)
		}
		if tc.reason != "" && (len(v.Reasons) != 1 || v.Reasons[0].Message != tc.reason || v.Reasons[0].Type != metadata.ReasonSignature ||
			v.Reasons[0].Identity != bad.Identity) {
			t.Errorf("%s: reasons %+v, want %q", tc.name, v.Reasons, tc.reason)
		}
		if tc.state == metadata.StateApproved && tc.repo == "quay/app" && (len(v.Signatures) != 1 || v.Signatures[0] != ok) {
			t.Errorf("%s: verdict keeps evidence %+v", tc.name, v.Signatures)
		}
	}
	if _, err := Compile([]config.Policy{{Name: "s", Match: []string{"x/*"}, Signature: &config.Signature{}}}, os.ReadFile, nil); err == nil {
		t.Error("a signature policy compiled without a way to check signatures")
	}
}
