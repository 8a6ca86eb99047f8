package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/store/storetest"
)

// TestDemoRunsToTheEnd runs `stagely demo` as `make demo` does, on a free
// port, and checks it went through every stage and exited cleanly.
func TestDemoRunsToTheEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	if err := run(ctx, []string{"demo", "--database-url", storetest.AdminURL(), "--proxy-addr", "127.0.0.1:0"}, &out, &errb); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, out.String(), errb.String())
	}
	for _, want := range []string{"Opened pull request #1", "Preview: http://", "Hello from pull request #1",
		"Hello again, after a push", "reacted 🚀", "answers 404", "Done."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
