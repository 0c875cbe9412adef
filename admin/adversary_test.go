package admin_test

import (
	"net/http"
	"testing"

	"github.com/airlock-registry/airlock/admin/admintest"
)

// An expiry past year 9999 cannot be written as JSON: accepting it would
// fail inside the store with an internal error (or, worse, leave memory
// and store apart). It is refused as a bad request, and nothing changes.
func TestAdminAPIExpiryBeyondYear9999(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	before := f.snapshot()
	img := "/api/v1/images/" + f.unpRef + "/release"
	for _, expires := range []string{"9999-12-31", "9999-12-31T23:00:00-05:00", "3000000d"} {
		status, _, data := f.call("POST", img, admintest.AliceToken, `{"reason":"x","expires":"`+expires+`"}`)
		wantError(t, "expiry "+expires, status, data, http.StatusBadRequest, "INVALID", "")
	}
	f.unchanged(before, "expiries beyond year 9999")
	// The last day that can be written still works.
	f.ok("POST", img, `{"reason":"x","expires":"9999-12-30"}`, nil)
}
