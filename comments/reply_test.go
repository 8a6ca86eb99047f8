package comments

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestRenderedRepliesMatchGoldenFiles(t *testing.T) {
	status := stickies()[StateReady]
	failed := stickies()[StateFailed]
	for name, render := range map[string]func() (string, error){
		"not_permitted":        func() (string, error) { return RenderNotPermitted("octocat", "destroy", "read") },
		"not_permitted_nouser": func() (string, error) { return RenderNotPermitted("", "redeploy", "") },
		"awaiting_approval":    func() (string, error) { return RenderAwaitingApproval("octocat", sha) },
		"not_enabled":          func() (string, error) { return RenderNotEnabled("acme/shop") },
		"status_ready":         func() (string, error) { return RenderStatus(status) },
		"status_failed":        func() (string, error) { return RenderStatus(failed) },
	} {
		t.Run(name, func(t *testing.T) {
			body, err := render()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(body, secret) || strings.Contains(body, Marker) {
				t.Errorf("reply shows a secret or the sticky marker:\n%s", body)
			}
			golden(t, "reply_"+name, body)
		})
	}
}

func TestReplyPostsAFittedComment(t *testing.T) {
	f, gh := newFake(t)
	id, err := Reply(context.Background(), gh.Issues, "acme", "shop", 7, strings.Repeat("日本語 line\n", 20000))
	if err != nil || id == 0 {
		t.Fatalf("Reply = %d, %v", id, err)
	}
	body := f.body(id)
	if n := utf8.RuneCountInString(body); n >= 65536 || !utf8.ValidString(body) || !strings.HasSuffix(body, truncatedNote) {
		t.Errorf("posted %d characters ending %q", n, body[max(0, len(body)-60):])
	}
	if f.count("POST /repos/acme/shop/issues/7/comments") != 1 {
		t.Errorf("requests %v", f.requests)
	}
}

func TestReact(t *testing.T) {
	f, gh := newFake(t)
	ctx := context.Background()
	for _, content := range []string{ReactionSeen, ReactionDone, ReactionRefused} {
		if err := React(ctx, gh.Reactions, "acme", "shop", 55, content); err != nil {
			t.Fatalf("React %s: %v", content, err)
		}
	}
	if got := strings.Join(f.reactions, " "); got != "55:eyes 55:rocket 55:confused" {
		t.Errorf("reactions %q", got)
	}
	if err := React(ctx, gh.Reactions, "acme", "shop", 55, "party"); err == nil {
		t.Error("React accepted a reaction GitHub does not have")
	}
	if err := React(ctx, gh.Reactions, "acme", "gone", 55, ReactionSeen); err == nil || !strings.Contains(err.Error(), "comment 55 on acme/gone") {
		t.Errorf("err = %v", err)
	}
}

func TestPermission(t *testing.T) {
	f, gh := newFake(t)
	f.perms = map[string]string{"admin": "admin", "writer": "write", "reader": "read", "outsider": "none"}
	for user, want := range map[string]string{"admin": "admin", "writer": "write", "reader": "read", "outsider": "none", "ghost": "none"} {
		got, err := Permission(context.Background(), gh.Repositories, "acme", "shop", user)
		if err != nil || got != want {
			t.Errorf("Permission(%s) = %q, %v; want %q", user, got, err, want)
		}
	}
	f.fail["GET /repos/acme/shop/collaborators/writer/permission"] = 502
	if _, err := Permission(context.Background(), gh.Repositories, "acme", "shop", "writer"); err == nil {
		t.Error("a GitHub failure became a permission")
	}
}

func TestCanWrite(t *testing.T) {
	for perm, want := range map[string]bool{
		"admin": true, "maintain": true, "write": true,
		"triage": false, "read": false, "none": false, "": false, "WRITE": false,
	} {
		if got := CanWrite(perm); got != want {
			t.Errorf("CanWrite(%q) = %v, want %v", perm, got, want)
		}
	}
}
