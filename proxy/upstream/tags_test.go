package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// paginate makes the real registry's tag list answer in pages of size n with
// a Link to the next page, as Docker Hub and distribution do. linkTo, if
// set, overrides the Link target (to test hostile links).
func paginate(next http.Handler, n string, linkTo func(last string) string) (http.Handler, *atomic.Int64) {
	var pages atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/team/app/tags/list" {
			next.ServeHTTP(w, r)
			return
		}
		pages.Add(1)
		r = r.Clone(r.Context())
		q := r.URL.Query()
		q.Set("n", n)
		r.URL.RawQuery = q.Encode()
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var page struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		_ = jsonUnmarshal(body, &page)
		// The in-process registry restarts from the top when nothing
		// follows "last"; a real one returns an empty page.
		if last := q.Get("last"); last != "" {
			page.Tags = slices.DeleteFunc(page.Tags, func(tag string) bool { return tag <= last })
			body, _ = json.Marshal(page)
		}
		if len(page.Tags) > 0 && len(page.Tags) == atoi(n) {
			last := page.Tags[len(page.Tags)-1]
			target := "/v2/team/app/tags/list?n=" + n + "&last=" + url.QueryEscape(last)
			if linkTo != nil {
				target = linkTo(last)
			}
			w.Header().Set("Link", "<"+target+`>; rel="next"`)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}), &pages
}

func TestTags(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	seed(t, inner, "team/app", "a", "b", "c", "d", "e")
	want := []string{"a", "b", "c", "d", "e"}
	tests := []struct {
		name   string
		n      string
		linkTo func(last string) string
		pages  int64
		want   error
	}{
		{name: "pages of two", n: "2", pages: 3},
		{name: "pages of one", n: "1", pages: 6},
		{name: "one page", n: "10", pages: 1},
		{name: "link to another host", n: "2", linkTo: func(string) string { return "http://192.0.2.1/v2/team/app/tags/list" }, pages: 1, want: ErrInvalid},
		{name: "link that loops", n: "2", linkTo: func(string) string { return "/v2/team/app/tags/list?n=2" }, pages: 2, want: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, pages := paginate(inner, tt.n, tt.linkTo)
			r := newClient(t, serve(t, h).URL)
			got, err := r.Tags(t.Context(), "team/app")
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Tags: %v, want %v", err, tt.want)
			}
			if err == nil && !slices.Equal(got, want) {
				t.Errorf("tags %q, want %q", got, want)
			}
			if pages.Load() != tt.pages {
				t.Errorf("fetched %d pages, want %d", pages.Load(), tt.pages)
			}
		})
	}
}

func TestNextLink(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   []string
		want string
		ok   bool
	}{
		{[]string{`</v2/a/tags/list?n=2&last=b>; rel="next"`}, "/v2/a/tags/list?n=2&last=b", true},
		{[]string{`<https://r.example/v2/a/tags/list?last=b>;rel=next`}, "https://r.example/v2/a/tags/list?last=b", true},
		{[]string{`</prev>; rel="prev", </next>; rel="next"`}, "/next", true},
		{[]string{`</prev>; rel="prev"`, `</next>; rel="next"`}, "/next", true},
		{[]string{`</x>; rel="prev next"`}, "/x", true},
		{[]string{`</x>; title="a, b"; rel="prev"`}, "", false},
		{[]string{`garbage`}, "", false},
		{nil, "", false},
	}
	for _, tt := range tests {
		got, ok := nextLink(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("nextLink(%q) = %q %v, want %q %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestTagListBounded: an upstream's tag list is gathered in memory, so it is
// bounded as a whole: too many tags in one page, or pages that together
// exceed the byte bound, fail with a message a client may see, instead of
// growing without end.
func TestTagListBounded(t *testing.T) {
	t.Parallel()
	// pages answers every page with tagsPerPage distinct tags of tagLen
	// bytes and a Link to another page, up to lastPage pages.
	pages := func(tagsPerPage, tagLen, lastPage int) (http.Handler, *atomic.Int64) {
		var served atomic.Int64
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			page := served.Add(1)
			var b strings.Builder
			b.WriteString(`{"name":"app","tags":[`)
			for i := range tagsPerPage {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"%0*d"`, tagLen, int(page)*tagsPerPage+i)
			}
			b.WriteString(`]}`)
			if page < int64(lastPage) {
				w.Header().Set("Link", fmt.Sprintf(`</v2/app/tags/list?page=%d>; rel="next"`, page+1))
			}
			_, _ = io.WriteString(w, b.String())
		}), &served
	}
	tests := []struct {
		name                      string
		perPage, tagLen, lastPage int
		wantPages                 int64
		wantErr                   bool
	}{
		{name: "within bounds", perPage: 1000, tagLen: 8, lastPage: 20, wantPages: 20},
		{name: "too many tags in one page", perPage: maxTags + 1, tagLen: 6, lastPage: 1, wantPages: 1, wantErr: true},
		{name: "too many tags over pages", perPage: 10_000, tagLen: 8, lastPage: 40, wantPages: maxTags/10_000 + 1, wantErr: true},
		// Each page is about 1 MB of (overlong) 1000-byte tags: the byte
		// bound stops it in the 17th page, long before the tag bound or
		// the page bound.
		{name: "too many bytes over pages", perPage: 1000, tagLen: 1000, lastPage: 40, wantPages: 17, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, served := pages(tt.perPage, tt.tagLen, tt.lastPage)
			r := newClient(t, serve(t, h).URL)
			tags, err := r.Tags(t.Context(), "app")
			if n := served.Load(); n != tt.wantPages {
				t.Errorf("served %d pages, want %d", n, tt.wantPages)
			}
			if !tt.wantErr {
				if err != nil || len(tags) != tt.perPage*tt.lastPage {
					t.Fatalf("Tags: %d tags, %v; want %d", len(tags), err, tt.perPage*tt.lastPage)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Tags: %d tags, %v; want ErrInvalid", len(tags), err)
			}
			if !strings.Contains(e.Public(), "more than airlock gathers") {
				t.Errorf("client message %q does not say why", e.Public())
			}
		})
	}
}

// TestTagListLinkBounded: next-page URLs are remembered (to detect loops),
// so each is bounded.
func TestTagListLinkBounded(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	seed(t, inner, "team/app", "a", "b", "c", "d", "e")
	pad := strings.Repeat("x", 16<<10)
	h, pages := paginate(inner, "2", func(last string) string {
		return "/v2/team/app/tags/list?n=2&last=" + url.QueryEscape(last) + "&pad=" + pad
	})
	r := newClient(t, serve(t, h).URL)
	if _, err := r.Tags(t.Context(), "team/app"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Tags: %v, want ErrInvalid", err)
	}
	if n := pages.Load(); n != 1 {
		t.Errorf("fetched %d pages, want 1", n)
	}
}

// TestTagListMemoryBounded: a page within the byte bound that lists
// millions of empty tags is refused without holding them: the tag bound
// applies while the page is decoded, not after.
func TestTagListMemoryBounded(t *testing.T) {
	// Not parallel: it measures the allocations of one Tags call.
	const n = 5_000_000
	body := `{"name":"app","tags":[` + strings.TrimSuffix(strings.Repeat(`"",`, n), ",") + `]}`
	if len(body) > maxTagListBytes {
		t.Fatalf("page of %d bytes is over the byte bound; the test needs it within", len(body))
	}
	r := newClient(t, serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, body)
	})).URL)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := r.Tags(t.Context(), "app")
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Tags: %v, want ErrInvalid", err)
	}
	// Reading the page costs about twice its size and decoding up to
	// maxTags tags a little more (50 MiB, 90 MiB under -race); decoding
	// five million strings whole cost 512 MiB.
	if got := after.TotalAlloc - before.TotalAlloc; got > 8*maxTagListBytes {
		t.Errorf("Tags allocated %d MiB for a %d MiB page", got>>20, len(body)>>20)
	}
}

// TestDecodeTags: the streaming decoder reads pages as encoding/json did.
func TestDecodeTags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body    string
		want    []string
		wantErr bool
	}{
		{body: `{"name":"app","tags":["a","b"]}`, want: []string{"a", "b"}},
		{body: `{"tags":null,"name":"app"}`, want: nil},
		{body: `{"name":"app"}`, want: nil},
		{body: `{"Tags":["a"],"extra":{"x":[1,2]}}`, want: []string{"a"}},
		{body: ` {"tags":[]} `, want: []string{}},
		{body: `{"tags":["a",1]}`, wantErr: true},
		{body: `{"tags":"a"}`, wantErr: true},
		{body: `["a"]`, wantErr: true},
		{body: `{"tags":["a"]} {}`, wantErr: true},
		{body: `{"tags":["a","b","c","d"]}`, wantErr: true}, // over room
	} {
		got, err := decodeTags([]byte(tc.body), 3)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) || (tc.want != nil && got == nil) {
			t.Errorf("decodeTags(%s) = %q, %v", tc.body, got, err)
		}
	}
}
