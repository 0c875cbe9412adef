package postgres

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/airlock-registry/airlock/internal/pgtest"
)

// TestMain stops the test binary's PostgreSQL after the tests and then
// checks that no Store left a goroutine behind (a listener, an access-time
// writer, a pool's health check).
func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}
