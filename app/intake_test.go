package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func recorded(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(webhooksDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIntakeRejectsBadInputAndRecordsNothing(t *testing.T) {
	in := newIntake(t, 0)
	opened := recorded(t, "pull_request.opened.2.json")
	big := append([]byte(`{"action":"opened","padding":"`), bytes.Repeat([]byte("x"), 25<<20)...)
	big = append(big, `"}`...)
	cases := []struct {
		name   string
		event  string
		body   []byte
		sig    string
		status int
	}{
		{"forged signature", "pull_request", opened, sign(opened, "not-the-secret"), http.StatusUnauthorized},
		{"missing signature", "pull_request", opened, "", http.StatusUnauthorized},
		{"signature of other body", "pull_request", opened, sign([]byte("{}"), secret), http.StatusUnauthorized},
		{"sha1 only is not enough", "pull_request", opened, "sha1=0000", http.StatusUnauthorized},
		{"over 25 MB", "pull_request", big, sign(big, secret), http.StatusRequestEntityTooLarge},
		{"malformed JSON", "pull_request", []byte(`{"action":"opened",`), sign([]byte(`{"action":"opened",`), secret), http.StatusBadRequest},
		{"wrong JSON shape", "pull_request", []byte(`{"action":"opened","pull_request":"nope"}`), sign([]byte(`{"action":"opened","pull_request":"nope"}`), secret), http.StatusBadRequest},
		{"missing event header", "", opened, sign(opened, secret), http.StatusBadRequest},
		{"unhandled event", "star", []byte(`{"action":"created"}`), sign([]byte(`{"action":"created"}`), secret), http.StatusAccepted},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := in.post(c.event, fmt.Sprintf("bad-%d", i), c.body, c.sig)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
			}
			for _, table := range []string{"webhook_deliveries", "environments", "installations", "repositories", "commands"} {
				if n := count(t, in.db, table); n != 0 {
					t.Errorf("%d rows in %s after a rejected delivery", n, table)
				}
			}
		})
	}
}

func TestRedeliveryOfDoneDeliveryChangesNothing(t *testing.T) {
	in := newIntake(t, 0)
	ctx := context.Background()
	body := recorded(t, "pull_request.opened.2.json")
	woken := make(chan string, 10)
	if err := in.wake.Subscribe(ctx, "stagely:wake", func(m string) { woken <- m }); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if w := in.post("pull_request", "same-guid", body, sign(body, secret)); w.Code != http.StatusOK {
			t.Fatalf("delivery %d: %d %s", i, w.Code, w.Body)
		}
	}
	var gen, seq int64
	if err := in.db.NewRaw("SELECT desired_generation, intent_seq FROM environments").Scan(ctx, &gen, &seq); err != nil {
		t.Fatal(err)
	}
	if gen != 1 || seq != 1 {
		t.Errorf("after 3 copies of one delivery: generation %d, intent %d; want 1, 1", gen, seq)
	}
	var attempts int
	if err := in.db.NewRaw("SELECT attempts FROM webhook_deliveries WHERE delivery_id = 'same-guid'").Scan(ctx, &attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 {
		t.Errorf("done delivery processed %d times", attempts)
	}
	if len(woken) != 1 {
		t.Errorf("workers woken %d times, want once", len(woken))
	}
}

func TestCommentsFromBotsAreIgnored(t *testing.T) {
	in := newIntake(t, 0)
	base := string(recorded(t, "issue_comment.created.4.json"))
	cases := []struct {
		name     string
		body     string
		userType string
		login    string
		want     int
	}{
		{"human command", "/stagely redeploy", "User", "octocat", 1},
		{"human help", "/Stagely help", "User", "octocat", 1},
		{"human chat", "looks good to me", "User", "octocat", 0},
		{"bot command", "/stagely redeploy", "Bot", "stagely[bot]", 0},
		{"other bot", "/stagely destroy", "Bot", "dependabot[bot]", 0},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := in.db.ExecContext(context.Background(), "TRUNCATE commands, environments, repositories, installations, webhook_deliveries CASCADE"); err != nil {
				t.Fatal(err)
			}
			p := withComment(t, base, c.body, c.login, c.userType)
			if w := in.post("issue_comment", fmt.Sprintf("c-%d", i), p, sign(p, secret)); w.Code != http.StatusOK {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
			if n := count(t, in.db, "commands"); n != c.want {
				t.Errorf("%d commands recorded, want %d", n, c.want)
			}
		})
	}
}

// withComment rewrites a recorded issue_comment payload: it puts it on a
// pull request and sets the comment's body and author.
func withComment(t *testing.T, base, body, login, userType string) []byte {
	t.Helper()
	var m map[string]any
	dec := jsonDecoder(strings.NewReader(base))
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	issue := m["issue"].(map[string]any)
	issue["pull_request"] = map[string]any{"url": "https://api.github.com/repos/o/r/pulls/1"}
	c := m["comment"].(map[string]any)
	c["body"] = body
	c["user"] = map[string]any{"login": login, "type": userType, "id": 1}
	m["sender"] = map[string]any{"login": login, "type": userType, "id": 1}
	return mustJSON(t, m)
}
