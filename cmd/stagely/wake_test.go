package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/stagely-dev/stagely/app"
	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
	"github.com/stagely-dev/stagely/store"
)

// wakeWithin bounds how long a woken worker may take to report on a pull
// request: generous for a slow machine under the race detector, and
// nothing next to the hour the workers wait between polls.
const wakeWithin = 20 * time.Second

// TestValkeyWakeUpStartsTheWork shows that workers are started by the
// Valkey pub/sub wake-up, not by their polling: the webhook reaches an
// intake-only server, the only workers are in another server that polls
// once an hour, and the Check Run must still come within seconds. It
// fails if the intake does not publish the wake-up or the workers do not
// subscribe to it.
func TestValkeyWakeUpStartsTheWork(t *testing.T) {
	w := newWorld(t, nil)
	w.valkey = valkeyURL()
	vk := valkeyClient(t)

	d := reconcilertest.New()
	workers := w.config(2)
	workers.poll = time.Hour
	// The workers' connections carry a name of their own, so the test can
	// tell their subscription from any other on the same Valkey.
	name := fmt.Sprintf("stagely-wake-test-%d", time.Now().UnixNano())
	workers.valkeyURL = withClientName(t, valkeyURL(), name)
	w.start(workers, d)
	// The workers claim what is pending once they have subscribed, then
	// wait for a wake-up or the next poll. The webhooks go to a server
	// started only once they have subscribed, so nothing but a wake-up can
	// bring them the pull request.
	eventually(t, 15*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		list, err := vk.Do(ctx, vk.B().ClientList().Build()).ToString()
		if err != nil {
			return false, "CLIENT LIST: " + err.Error()
		}
		for _, line := range strings.Split(list, "\n") {
			f := map[string]string{}
			for _, kv := range strings.Fields(line) {
				k, v, _ := strings.Cut(kv, "=")
				f[k] = v
			}
			if f["name"] == name && f["sub"] != "" && f["sub"] != "0" {
				return true, ""
			}
		}
		return false, "the workers' server has no connection subscribed to a channel on Valkey; want one subscribed to " + app.WakeChannel
	})

	intake := w.config(0)
	intake.poll = time.Hour
	w.start(intake, reconcilertest.New()) // webhooks now go to it

	ctx := context.Background()
	var number int
	for _, step := range []string{"opened", "synchronize"} {
		start := time.Now()
		var sha string
		if step == "opened" {
			pr := w.openPR("wake")
			number, sha = pr.Number, pr.SHA
		} else {
			sha = w.push(number, "v2").SHA
		}
		eventually(t, wakeWithin, func() (bool, string) {
			rs := w.runs(sha)
			return len(rs) == 1 && rs[0].Status == "completed" && rs[0].Conclusion == "success",
				fmt.Sprintf("check runs on %s after pull_request.%s: %s; want one completed/success within %s though the workers poll hourly: was the wake-up published on Valkey and received from it?",
					sha[:7], step, describeRuns(rs), wakeWithin)
		})
		t.Logf("pull_request.%s: %s deployed after %s", step, sha[:7], time.Since(start).Round(time.Millisecond))
		// The worker lets the environment go, and waits again, before the
		// next event.
		eventually(t, wakeWithin, func() (bool, string) {
			var e store.Environment
			if err := w.db.NewSelect().Model(&e).Where("pr_number = ?", number).Scan(ctx); err != nil {
				return false, err.Error()
			}
			return e.IntentSeq == e.HandledSeq && e.LeaseOwner == "", fmt.Sprintf("environment still held by %q (intent %d/%d)", e.LeaseOwner, e.HandledSeq, e.IntentSeq)
		})
	}
	if n := len(d.Deploys()); n != 2 {
		t.Errorf("%d deploys by the workers, want 2 (the opened head and the push)", n)
	}
}

// withClientName adds a client name to a Valkey URL.
func withClientName(t *testing.T, raw, name string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("client_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// valkeyClient connects to the test Valkey to look at its pub/sub state.
func valkeyClient(t *testing.T) valkey.Client {
	t.Helper()
	opt, err := valkey.ParseURL(valkeyURL())
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := valkey.NewClient(opt)
	if err != nil {
		t.Fatalf("valkey at %s is required for this test (run scripts/services.sh): %v", valkeyURL(), err)
	}
	t.Cleanup(c.Close)
	return c
}
