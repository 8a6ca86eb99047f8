package comments

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stagely-dev/stagely/checks"
)

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

const (
	sha    = "3f2c9a1b7d4e5f60718293a4b5c6d7e8f9012345"
	secret = "hunter2-s3cr3t-Tok3n"
)

var previews = []checks.Preview{
	{Name: "web", URL: "https://k3x9q2.preview.example.com"},
	{Name: "api", URL: "https://k3x9q2-api.preview.example.com"},
}

// stateDestroyedIdle names the golden file of a preview the reaper
// destroyed for inactivity; it renders as StateDestroyed.
const stateDestroyedIdle State = "destroyed_idle"

func stickies() map[State]Sticky {
	base := Sticky{Repo: "acme/shop", PR: 7, SHA: sha, UpdatedAt: t0, Secrets: []string{secret}}
	with := func(f func(*Sticky)) Sticky { s := base; f(&s); return s }
	return map[State]Sticky{
		StateQueued:    with(func(s *Sticky) { s.State = StateQueued }),
		StateDeploying: with(func(s *Sticky) { s.State = StateDeploying }),
		StateReady:     with(func(s *Sticky) { s.State = StateReady; s.Previews = previews }),
		StateFailed: with(func(s *Sticky) {
			s.State = StateFailed
			s.Err = "Step \"Build images\" failed: service web exited with code 1.\nThe registry refused the token " + secret + "."
		}),
		StateDestroyed:        with(func(s *Sticky) { s.State = StateDestroyed; s.Message = "The pull request was closed." }),
		StateNotEnabled:       with(func(s *Sticky) { s.State = StateNotEnabled }),
		stateDestroyedIdle:    with(func(s *Sticky) { s.State = StateDestroyed; s.IdleFor = 72 * time.Hour }),
		StateAwaitingApproval: with(func(s *Sticky) { s.State = StateAwaitingApproval }),
		StateInvalidConfig: with(func(s *Sticky) {
			s.State = StateInvalidConfig
			s.Err = ".stagely.yml line 4: previews[0].port: must be between 1 and 65535, got 0\n.stagely.yml line 9: ttl: \"3 days\" is not a duration (try 72h)"
		}),
	}
}

func TestRenderStickyMatchesGoldenFiles(t *testing.T) {
	for state, s := range stickies() {
		t.Run(string(state), func(t *testing.T) {
			body, err := RenderSticky(s)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(body, Marker+"\n") {
				t.Errorf("body does not start with the marker")
			}
			if strings.Contains(body, secret) {
				t.Errorf("body shows the secret")
			}
			golden(t, "sticky_"+string(state), body)
		})
	}
}

// A preview URL ends in the path the pull request's .stagely.yml gives,
// which may hold anything but white space and control characters. GitHub
// ends its linking of a bare URL at "<", so what follows would be
// Markdown of the author's choosing in the bot's comment: a link that
// looks like Stagely's, an image, an @mention that notifies people or
// teams. The URL must be one autolink, inside which nothing is parsed.
func TestRenderStickyShowsAPreviewURLAsOneLink(t *testing.T) {
	const path = "/<[✅_Open_preview](https://attacker.example/login)<![](https://attacker.example/t.png)<@acme/security|x"
	previews := []checks.Preview{{Name: "web", URL: "https://k3x9q2.preview.example.com" + path}}
	sticky := func() (string, error) {
		s := stickies()[StateReady]
		s.Previews = previews
		return RenderSticky(s)
	}
	// The Check Run's summary has the same table (Check Runs notify
	// nobody, but a link or an image there misleads as much).
	summary := func() (string, error) {
		out, err := checks.Render(checks.Report{Status: "completed", Conclusion: "success", SHA: "0123456789abcdef",
			Now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Previews: previews})
		return out.GetSummary(), err
	}
	for name, render := range map[string]func() (string, error){"sticky comment": sticky, "check run summary": summary} {
		t.Run(name, func(t *testing.T) {
			body, err := render()
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(body, "\n") {
				cell, ok := strings.CutPrefix(line, "| web | ")
				if !ok {
					continue
				}
				cell = strings.TrimSuffix(cell, " |")
				inner, opened := strings.CutPrefix(cell, "<https://k3x9q2.preview.example.com/")
				inner, closed := strings.CutSuffix(inner, ">")
				if !opened || !closed || strings.ContainsAny(inner, "<>| ") {
					t.Errorf("the URL cell is not one autolink: %s", cell)
				}
				return
			}
			t.Fatalf("no row for the preview:\n%s", body)
		})
	}
}

func TestRenderStickyMasksSecretsButNeverTheMarker(t *testing.T) {
	s := stickies()[StateFailed]
	s.Secrets = append(s.Secrets, "stagely", "web")
	s.Message = "web is down"
	body, err := RenderSticky(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(body, Marker+"\n") {
		t.Fatalf("the marker was masked: %.80q", body)
	}
	rest := strings.TrimPrefix(body, Marker)
	for _, secret := range s.Secrets {
		if strings.Contains(rest, secret) {
			t.Errorf("body shows %q", secret)
		}
	}
}

func TestRenderStickyRejectsAnUnknownState(t *testing.T) {
	if _, err := RenderSticky(Sticky{State: "running"}); err == nil {
		t.Fatal("RenderSticky accepted state running")
	}
}

func TestRenderStickyStaysUnderGitHubsLimit(t *testing.T) {
	hugeErr := stickies()[StateFailed]
	hugeErr.Err = strings.Repeat("ошибка 🙂 on this line\n", 10000) // ~290 KB, multi-byte
	manyURLs := stickies()[StateReady]
	for i := range 3000 {
		manyURLs.Previews = append(manyURLs.Previews, checks.Preview{Name: "svc-é", URL: "https://p" + strings.Repeat("x", i%50) + ".preview.example.com"})
	}
	for name, tt := range map[string]struct {
		s    Sticky
		note string
	}{
		"huge error":        {hugeErr, "(error truncated)"},
		"many preview URLs": {manyURLs, "\n" + truncatedNote},
	} {
		t.Run(name, func(t *testing.T) {
			body, err := RenderSticky(tt.s)
			if err != nil {
				t.Fatal(err)
			}
			if n := utf8.RuneCountInString(body); n >= 65536 || len(body) > maxBodyBytes {
				t.Fatalf("body has %d characters, %d bytes", n, len(body))
			}
			if !utf8.ValidString(body) || !strings.HasPrefix(body, Marker+"\n") {
				t.Fatalf("body starts %.40q", body)
			}
			if !strings.Contains(body, tt.note) {
				t.Errorf("no note %q that text was cut; body ends %q", tt.note, body[len(body)-80:])
			}
		})
	}
}

func TestUpsertCreatesOnceThenEditsOnlyWhenTheBodyChanges(t *testing.T) {
	f, gh := newFake(t)
	ctx := context.Background()
	body := Marker + "\nqueued"

	id, changed, err := Upsert(ctx, gh.Issues, "acme", "shop", 7, bot, 0, body)
	if err != nil || id == 0 || !changed {
		t.Fatalf("first Upsert = %d, %v, %v", id, changed, err)
	}
	id2, changed, err := Upsert(ctx, gh.Issues, "acme", "shop", 7, bot, id, body)
	if err != nil || id2 != id || changed {
		t.Fatalf("same body: Upsert = %d, %v, %v; want %d, false", id2, changed, err, id)
	}
	if n := f.count("PATCH "); n != 0 {
		t.Errorf("an unchanged body was edited (%d PATCH)", n)
	}
	id3, changed, err := Upsert(ctx, gh.Issues, "acme", "shop", 7, bot, id, Marker+"\nready")
	if err != nil || id3 != id || !changed {
		t.Fatalf("new body: Upsert = %d, %v, %v", id3, changed, err)
	}
	if f.count("POST ") != 1 || f.count("PATCH ") != 1 || f.body(id) != Marker+"\nready" {
		t.Errorf("requests %v", f.requests)
	}
	if n := f.count("GET /repos/acme/shop/issues/7/comments"); n != 1 {
		t.Errorf("%d list requests; with a known id only the first Upsert should search", n)
	}
}

func TestUpsertFindsTheStickyOnTheLastPage(t *testing.T) {
	f, gh := newFake(t)
	f.pageSize = 2
	f.add(7, "alice", "Looks good")
	f.add(7, "bob", "Can we get a preview?")
	f.add(8, bot, Marker+"\nanother pull request's sticky")
	f.add(7, bot, "a reply from the bot, not the sticky")
	f.add(7, "carol", "thanks")
	want := f.add(7, "Stagely[bot]", Marker+"\nold state") // page 3 of 3; logins compare without case

	id, changed, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, 0, Marker+"\nnew state")
	if err != nil || id != want || !changed {
		t.Fatalf("Upsert = %d, %v, %v; want %d, true", id, changed, err, want)
	}
	if n := f.count("GET /repos/acme/shop/issues/7/comments"); n != 3 {
		t.Errorf("%d list requests, want 3 pages", n)
	}
	if f.count("POST ") != 0 || f.body(want) != Marker+"\nnew state" {
		t.Errorf("requests %v", f.requests)
	}
}

func TestUpsertFoundBySearchWithTheSameBodyIsNotEdited(t *testing.T) {
	f, gh := newFake(t)
	want := f.add(7, bot, Marker+"\nready")
	id, changed, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, 0, Marker+"\nready\n")
	if err != nil || id != want || changed {
		t.Fatalf("Upsert = %d, %v, %v", id, changed, err)
	}
	if f.count("PATCH ")+f.count("POST ") != 0 {
		t.Errorf("requests %v", f.requests)
	}
}

func TestUpsertIgnoresTheMarkerInAHumansComment(t *testing.T) {
	f, gh := newFake(t)
	human := f.add(7, "mallory", "> "+Marker+"\n> ready\nwhy is this here?")
	id, changed, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, human, Marker+"\nqueued")
	if err != nil || !changed || id == human {
		t.Fatalf("Upsert = %d, %v, %v (human comment %d)", id, changed, err, human)
	}
	if f.count("POST ") != 1 || f.count("PATCH ") != 0 || !strings.HasPrefix(f.body(human), "> ") {
		t.Errorf("requests %v", f.requests)
	}
}

// A commenter can make the bot quote the marker back: the reply to an
// unknown command shows the command as typed. That reply is the bot's
// but not the sticky; taking it for the sticky would overwrite it, and a
// reply posted before the first sticky would become the sticky.
func TestUpsertIgnoresTheMarkerQuotedInTheBotsOwnReply(t *testing.T) {
	f, gh := newFake(t)
	quoted := Parse(`/stagely "` + Marker + `"`).Reply
	if !strings.Contains(quoted, Marker) {
		t.Fatalf("the reply does not quote the marker, so this test tests nothing:\n%s", quoted)
	}
	reply := f.add(7, bot, "<!-- stagely:reply:1 -->\n"+quoted)
	id, changed, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, 0, Marker+"\nqueued")
	if err != nil || !changed || id == reply {
		t.Fatalf("Upsert = %d, %v, %v (the bot's reply is %d)", id, changed, err, reply)
	}
	if f.count("POST ") != 1 || f.count("PATCH ") != 0 {
		t.Errorf("requests %v", f.requests)
	}
}

func TestUpsertWithADeletedKnownID(t *testing.T) {
	t.Run("finds the sticky by search", func(t *testing.T) {
		f, gh := newFake(t)
		deleted := f.add(7, bot, Marker+"\nold")
		f.remove(deleted)
		existing := f.add(7, bot, Marker+"\nolder")
		id, changed, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, deleted, Marker+"\nnew")
		if err != nil || id != existing || !changed {
			t.Fatalf("Upsert = %d, %v, %v; want %d", id, changed, err, existing)
		}
	})
	t.Run("creates when there is none", func(t *testing.T) {
		f, gh := newFake(t)
		id, changed, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, 4242, Marker+"\nnew")
		if err != nil || id == 0 || id == 4242 || !changed {
			t.Fatalf("Upsert = %d, %v, %v", id, changed, err)
		}
		if f.count("GET /repos/acme/shop/issues/comments/4242") != 1 || f.count("POST ") != 1 {
			t.Errorf("requests %v", f.requests)
		}
	})
	t.Run("a known id on another pull request is not taken", func(t *testing.T) {
		f, gh := newFake(t)
		other := f.add(8, bot, Marker+"\npull request 8")
		id, _, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, other, Marker+"\npull request 7")
		if err != nil || id == other || f.body(other) != Marker+"\npull request 8" {
			t.Fatalf("Upsert = %d, %v; pull request 8's comment: %q", id, err, f.body(other))
		}
	})
}

func TestUpsertRefusesWhatCouldDuplicate(t *testing.T) {
	f, gh := newFake(t)
	if _, _, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, 0, "no marker"); err == nil {
		t.Error("Upsert accepted a body without the marker")
	}
	if _, _, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, "", 0, Marker); err == nil {
		t.Error("Upsert accepted an empty bot login")
	}
	if len(f.requests) != 0 {
		t.Errorf("requests %v", f.requests)
	}
}

func TestUpsertStopsOnErrors(t *testing.T) {
	f, gh := newFake(t)
	known := f.add(7, bot, Marker+"\nold")
	f.fail["GET /repos/acme/shop/issues/comments/"+itoa(known)] = 500
	_, _, err := Upsert(context.Background(), gh.Issues, "acme", "shop", 7, bot, known, Marker+"\nnew")
	if err == nil || !strings.Contains(err.Error(), "get sticky comment") || !strings.Contains(err.Error(), "acme/shop#7") {
		t.Errorf("err = %v", err)
	}
	if f.count("POST ") != 0 {
		t.Error("a failed read led to a second comment")
	}
}
