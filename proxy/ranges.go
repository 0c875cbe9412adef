package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// errRangeIgnored means a Range header airlock answers with the whole body,
// as RFC 9110 allows (several ranges, or a unit other than bytes).
var errRangeIgnored = errors.New("range ignored")

// parseRange parses a single byte range against a body of size bytes and
// returns the first and last byte positions, inclusive. Forms: "bytes=a-b",
// "bytes=a-" (open) and "bytes=-n" (the last n bytes).
func parseRange(header string, size int64) (first, last int64, err error) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(header), "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, errRangeIgnored
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, errRangeInvalid(header, size)
	}
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	switch {
	case a == "" && b == "":
		return 0, 0, errRangeInvalid(header, size)
	case a == "":
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, errRangeInvalid(header, size)
		}
		if n > size {
			n = size
		}
		return size - n, size - 1, nil
	}
	first, err = strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 || first >= size {
		return 0, 0, errRangeInvalid(header, size)
	}
	last = size - 1
	if b != "" {
		last, err = strconv.ParseInt(b, 10, 64)
		if err != nil || last < first {
			return 0, 0, errRangeInvalid(header, size)
		}
		if last >= size {
			last = size - 1
		}
	}
	return first, last, nil
}

func errRangeInvalid(header string, size int64) error {
	return &Error{Status: http.StatusRequestedRangeNotSatisfiable, Code: CodeRangeUnsatisfied,
		Message: fmt.Sprintf("range %q cannot be satisfied for a blob of %d bytes", header, size)}
}
