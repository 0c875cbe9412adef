package netfault

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echo serves one line back per line read, until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends a line through c and reads the answer within wait.
func roundTrip(c net.Conn, wait time.Duration) error {
	c.SetDeadline(time.Now().Add(wait))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	_, err := bufio.NewReader(c).ReadString('\n')
	return err
}

func TestCutStallMend(t *testing.T) {
	l := New(t, echo(t))
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, 5*time.Second); err != nil {
		t.Fatalf("through the link: %v", err)
	}

	l.Stall()
	if err := roundTrip(c, 300*time.Millisecond); err == nil {
		t.Fatal("an answer came through a stalled link")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("a stalled link ended the connection (%v); it must stay open and silent", err)
	}
	l.Mend()
	c2, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := roundTrip(c2, 5*time.Second); err != nil {
		t.Fatalf("a new connection after Mend: %v", err)
	}

	l.Cut()
	if err := roundTrip(c2, 5*time.Second); err == nil {
		t.Fatal("an open connection survived Cut")
	}
	c3, err := net.Dial("tcp", l.Addr())
	if err == nil {
		if roundTrip(c3, 5*time.Second) == nil {
			t.Fatal("a new connection was answered while cut")
		}
		c3.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.Refused() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if l.Refused() == 0 {
		t.Error("no refused connection counted while cut")
	}
	l.Mend()
	c4, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c4.Close()
	if err := roundTrip(c4, 5*time.Second); err != nil {
		t.Fatalf("a new connection after Mend of a cut: %v", err)
	}
	l.Close()
	l.Close()
}
