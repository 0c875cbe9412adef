package pgtest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connecting to %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestDSNGivesFreshDatabases(t *testing.T) {
	a, b := DSN(t), DSN(t)
	if a == b {
		t.Fatalf("two calls gave one database: %s", a)
	}
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(t.Context(), `CREATE TABLE only_in_a (x int)`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := cb.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("a table created in one database shows in the other")
	}
	var addr string
	if err := ca.QueryRow(t.Context(), `SELECT host(inet_server_addr())`).Scan(&addr); err != nil {
		t.Fatal(err)
	}
	if addr != "127.0.0.1" {
		t.Errorf("server address %q, want 127.0.0.1", addr)
	}
	var fsync string
	if err := ca.QueryRow(t.Context(), `SHOW fsync`).Scan(&fsync); err != nil {
		t.Fatal(err)
	}
	if fsync != "off" {
		t.Errorf("fsync = %s, want off", fsync)
	}
}

func TestDatabaseDroppedAfterTest(t *testing.T) {
	var name string
	t.Run("uses", func(t *testing.T) {
		conn := connect(t, DSN(t))
		if err := conn.QueryRow(t.Context(), `SELECT current_database()`).Scan(&name); err != nil {
			t.Fatal(err)
		}
	})
	s, err := start()
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, s.dsn("postgres"))
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database %s outlived its test", name)
	}
}

func TestServerNotRoot(t *testing.T) {
	conn := connect(t, DSN(t))
	s, _ := start()
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(s.dir, "data"), &st); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 && st.Uid == 0 {
		t.Errorf("the data directory is root's: the server would refuse to run")
	}
	var super bool
	if err := conn.QueryRow(t.Context(), `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		t.Fatal(err)
	}
	if !super {
		t.Errorf("the test role is not a superuser; tests creating extensions would fail")
	}
}

// TestNoOrphanWhenBinaryDies starts a server in a child test process, kills
// the child with SIGKILL (no cleanup runs) and expects the server to go
// with it.
func TestNoOrphanWhenBinaryDies(t *testing.T) {
	if os.Getenv("PGTEST_CHILD") == "1" {
		DSN(t)
		s, _ := start()
		fmt.Printf("postmaster %d %s\n", s.cmd.Process.Pid, s.dir)
		time.Sleep(time.Minute) // killed long before
		return
	}
	if _, err := binDir(); err != nil {
		DSN(t) // skips or fails as the environment says
	}
	child := exec.Command(os.Args[0], "-test.run=^TestNoOrphanWhenBinaryDies$", "-test.v")
	child.Env = append(os.Environ(), "PGTEST_CHILD=1")
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	var dir string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "postmaster" {
			pid, _ = strconv.Atoi(f[1])
			dir = f[2]
			break
		}
	}
	if pid == 0 {
		child.Process.Kill()
		child.Wait()
		t.Fatalf("the child printed no postmaster pid: %v", sc.Err())
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) && !zombie(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("postmaster %d still runs 30s after its test binary was killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The next server's start removes the abandoned directory.
	removeAbandoned()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("abandoned directory %s not removed: %v", dir, err)
	}
}

// zombie reports whether pid has exited but not been reaped (its parent,
// the killed child, is gone, so init reaps it eventually).
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}
