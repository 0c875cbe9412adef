package console

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// TestSlowFormBody: a client that starts a sign-in form and stops sending
// gets an answer once the form's time is up, rather than holding the
// request (and its connection) open for as long as it likes. The admin
// listener itself sets no read timeout beyond the headers'.
func TestSlowFormBody(t *testing.T) {
	t.Parallel()
	h := admintest.New(t, upstreamtest.New(t, upstreamtest.Options{}), "")
	c, err := New(Options{Store: h.Meta, Decider: h.Gate, TokenFile: h.TokenFile})
	if err != nil {
		t.Fatal(err)
	}
	c.formTimeout = 300 * time.Millisecond
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)

	resp, err := srv.Client().Get(srv.URL + "/ui/login")
	if err != nil {
		t.Fatal(err)
	}
	var body strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body.String())
	if m == nil {
		t.Fatal("no CSRF field on the sign-in form")
	}

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := "csrf=" + m[1] + "&token=al"
	fmt.Fprintf(conn, "POST /ui/login HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\n"+
		"Content-Length: %d\r\nCookie: %s=%s\r\n\r\n%s", srv.Listener.Addr(), len(start)+1000, loginCookie, m[1], start)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer within 5s to a form that stopped half-way: %v", err)
	}
	answer.Body.Close()
	if answer.StatusCode != http.StatusBadRequest {
		t.Fatalf("a form that stopped half-way = %d; want 400", answer.StatusCode)
	}
}
