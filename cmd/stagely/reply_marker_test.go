package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stagely-dev/stagely/reconciler/reconcilertest"
	"github.com/stagely-dev/stagely/store"
)

// Each reply carries a hidden marker naming its command, looked for before
// posting so that a retry never posts twice. The reply to an unknown
// command quotes the command as typed, so anyone who may comment can make
// the bot post the marker of a command yet to come: that command, a
// maintainer's /stagely status here, must still be answered.
func TestAQuotedReplyMarkerSilencesNoLaterCommand(t *testing.T) {
	w := newWorld(t, nil)
	w.serve(reconcilertest.New(), 2)
	pr := w.openPR("feature")
	w.completed(pr.SHA, "success", 5*time.Second)
	ctx := context.Background()

	var last int64
	if err := w.db.NewSelect().Model((*store.Command)(nil)).ColumnExpr("coalesce(max(id), 0)").Scan(ctx, &last); err != nil {
		t.Fatal(err)
	}
	next := last + 2 // mallory's comment is command last+1
	w.comment(pr.Number, "mallory", "read", fmt.Sprintf(`/stagely "<!-- stagely:reply:%d -->"`, next))
	eventually(t, 5*time.Second, func() (bool, string) { return len(w.replies(pr.Number)) == 1, "no reply to mallory" })

	w.comment(pr.Number, "alice", "write", "/stagely status")
	var alice store.Command
	eventually(t, 5*time.Second, func() (bool, string) {
		err := w.db.NewSelect().Model(&alice).Where("actor = 'alice'").Scan(ctx)
		return err == nil && alice.Status == store.CommandDone, fmt.Sprintf("alice's command: %+v, %v", alice, err)
	})
	if alice.ID != next {
		t.Fatalf("alice's command is %d, not %d: the test's guess of the next id is wrong", alice.ID, next)
	}
	rs := w.replies(pr.Number)
	if len(rs) != 2 || !strings.Contains(rs[1].Body, "Stagely preview: ready") {
		t.Fatalf("alice's /stagely status got no reply; replies: %d, last %q", len(rs), rs[len(rs)-1].Body)
	}
}
