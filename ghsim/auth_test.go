package ghsim

import (
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestAppJWT(t *testing.T) {
	f := newFixture(t)
	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := f.sim.Now()
	sign := func(claims jwt.MapClaims, key *rsa.PrivateKey) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodRS256, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := func(mod func(jwt.MapClaims)) string {
		c := jwt.MapClaims{"iss": "4242", "iat": now.Add(-30 * time.Second).Unix(), "exp": now.Add(5 * time.Minute).Unix()}
		if mod != nil {
			mod(c)
		}
		return sign(c, f.sim.key)
	}
	hs256, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"iss": "4242", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}).SignedString([]byte("secret"))

	tests := []struct {
		name   string
		header string // full Authorization header
		want   int
	}{
		{"valid, Bearer", "Bearer " + good(nil), 200},
		{"valid, iss as number", "Bearer " + good(func(c jwt.MapClaims) { c["iss"] = 4242 }), 200},
		{"valid, iat 50 s ahead", "Bearer " + good(func(c jwt.MapClaims) { c["iat"] = now.Add(50 * time.Second).Unix() }), 200},
		{"valid, exactly 10 minutes", "Bearer " + good(func(c jwt.MapClaims) {
			c["iat"] = now.Add(-time.Minute).Unix()
			c["exp"] = now.Add(9 * time.Minute).Unix()
		}), 200},
		{"expired", "Bearer " + good(func(c jwt.MapClaims) {
			c["iat"] = now.Add(-5 * time.Minute).Unix()
			c["exp"] = now.Add(-time.Second).Unix()
		}), 401},
		{"exp more than 10 minutes after iat", "Bearer " + good(func(c jwt.MapClaims) { c["exp"] = now.Add(11 * time.Minute).Unix() }), 401},
		// GitHub: exp "must be no more than 10 minutes into the future",
		// whatever iat says.
		{"exp more than 10 minutes ahead", "Bearer " + good(func(c jwt.MapClaims) {
			c["iat"] = now.Add(50 * time.Second).Unix()
			c["exp"] = now.Add(10*time.Minute + 50*time.Second).Unix()
		}), 401},
		{"iat too far in the future", "Bearer " + good(func(c jwt.MapClaims) {
			c["iat"] = now.Add(2 * time.Minute).Unix()
			c["exp"] = now.Add(5 * time.Minute).Unix()
		}), 401},
		{"no exp", "Bearer " + good(func(c jwt.MapClaims) { delete(c, "exp") }), 401},
		{"wrong issuer", "Bearer " + good(func(c jwt.MapClaims) { c["iss"] = "1" }), 401},
		{"wrong key", "Bearer " + sign(jwt.MapClaims{"iss": "4242", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}, otherKey), 401},
		{"HS256", "Bearer " + hs256, 401},
		{"garbage", "Bearer a.b.c", 401},
		{"no credentials", "", 401},
		{"installation token on /app", "token " + f.token(), 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", f.srv.URL+"/app", nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			_ = decodeBody(resp, &body)
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d (%v)", resp.StatusCode, tt.want, body)
			}
			if tt.want == 401 && body["message"] != "Bad credentials" {
				t.Errorf("message %q, want Bad credentials", body["message"])
			}
		})
	}
}

func TestInstallationTokens(t *testing.T) {
	f := newFixture(t)
	// A second installation with its own repository.
	other, err := f.sim.CreateInstallation(f.ctx, InstallationSpec{Account: "globex", AccountType: "User"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.sim.CreateRepo(f.ctx, RepoSpec{Owner: "globex", Name: "secret", Files: map[string]string{"x": "y"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.sim.CreateRepo(f.ctx, RepoSpec{Owner: "acme", Name: "gadgets"}); err != nil {
		t.Fatal(err)
	}

	// A token obtained through the API with the App's JWT.
	resp, body := f.do("POST", "/app/installations/"+itoa(f.inst)+"/access_tokens", f.jwt(), "null")
	wantStatus(t, resp, body, 201)
	created := decode[struct {
		Token        string    `json:"token"`
		ExpiresAt    time.Time `json:"expires_at"`
		Repositories []struct {
			FullName string `json:"full_name"`
		} `json:"repositories"`
	}](t, body)
	if !strings.HasPrefix(created.Token, "ghs_") || len(created.Token) != 40 {
		t.Errorf("token %q is not ghs_ + 36 characters", created.Token)
	}
	if got := created.ExpiresAt.Sub(f.sim.Now()); got != time.Hour {
		t.Errorf("token lives %s, want 1h", got)
	}
	if len(created.Repositories) != 2 || created.Repositories[0].FullName != "acme/widgets" {
		t.Errorf("token repositories %+v, want the installation's two", created.Repositories)
	}

	// A token narrowed to one repository.
	resp, body = f.do("POST", "/app/installations/"+itoa(f.inst)+"/access_tokens", f.jwt(), map[string]any{"repositories": []string{"gadgets"}})
	wantStatus(t, resp, body, 201)
	narrow := decode[struct{ Token string }](t, body).Token
	resp, body = f.do("POST", "/app/installations/"+itoa(f.inst)+"/access_tokens", f.jwt(), map[string]any{"repositories": []string{"secret"}})
	wantStatus(t, resp, body, 422)

	tok := created.Token
	tests := []struct {
		name, method, path, auth string
		bearer                   bool
		want                     int
	}{
		{"own repo", "GET", "/repos/acme/widgets", tok, false, 200},
		{"own repo, Bearer", "GET", "/repos/acme/widgets", tok, true, 200},
		{"own repo, case-insensitive", "GET", "/repos/ACME/Widgets", tok, false, 200},
		{"other installation's repo is hidden", "GET", "/repos/globex/secret", tok, false, 404},
		{"missing repo", "GET", "/repos/acme/nope", tok, false, 404},
		{"narrowed token, its repo", "GET", "/repos/acme/gadgets", narrow, false, 200},
		{"narrowed token, other repo", "GET", "/repos/acme/widgets", narrow, false, 404},
		{"unknown token", "GET", "/repos/acme/widgets", "ghs_0123456789abcdef0123456789abcdef0123", false, 401},
		{"JWT on a repo endpoint", "GET", "/repos/acme/widgets", f.jwt(), true, 403},
		{"no credentials", "GET", "/repos/acme/widgets", "", false, 401},
		{"unknown installation", "GET", "/app/installations/999999", f.jwt(), true, 404},
		{"other installation via JWT", "GET", "/app/installations/" + itoa(other.ID), f.jwt(), true, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, f.srv.URL+tt.path, nil)
			if tt.auth != "" {
				scheme := "token "
				if tt.bearer {
					scheme = "Bearer "
				}
				req.Header.Set("Authorization", scheme+tt.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}

	t.Run("expires after an hour", func(t *testing.T) {
		f.sim.Advance(59 * time.Minute)
		resp, body := f.do("GET", "/repos/acme/widgets", tok, nil)
		wantStatus(t, resp, body, 200)
		f.sim.Advance(2 * time.Minute)
		resp, body = f.do("GET", "/repos/acme/widgets", tok, nil)
		wantStatus(t, resp, body, 401)
		if m := decode[map[string]any](t, body)["message"]; m != "Bad credentials" {
			t.Errorf("message %v", m)
		}
		// A fresh token works again.
		resp, body = f.do("GET", "/repos/acme/widgets", f.token(), nil)
		wantStatus(t, resp, body, 200)
	})
}
