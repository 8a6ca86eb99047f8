package ghsim

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Limits GitHub puts on App JWTs.
const (
	jwtMaxLifetime = 10 * time.Minute
	jwtMaxIATSkew  = 60 * time.Second
	tokenLifetime  = time.Hour
)

// principal is who a request authenticated as.
type principal struct {
	app bool   // the App itself, by JWT
	tok *token // an installation, by token
}

// authError is a refused credential: the status GitHub answers and, for the
// request record, why.
type authError struct {
	status int
	reason string
}

func (e *authError) Error() string { return e.reason }

// authenticate checks the Authorization header for an operation that wants
// the given kind of credential. Must be called with s.mu held.
func (s *Sim) authenticate(r *http.Request, kind authKind, now time.Time) (principal, *authError) {
	cred, ok := credential(r.Header.Get("Authorization"))
	if !ok {
		return principal{}, &authError{401, "no credentials"}
	}
	if strings.HasPrefix(cred, "ghs_") {
		t := s.st.tokens[cred]
		switch {
		case t == nil:
			return principal{}, &authError{401, "unknown installation token"}
		case !now.Before(t.expiresAt):
			return principal{}, &authError{401, "installation token expired at " + t.expiresAt.Format(time.RFC3339)}
		case kind == authJWT:
			// GitHub cannot decode an installation token as the JWT it wants.
			return principal{}, &authError{401, "an installation token on an App (JWT) endpoint"}
		}
		return principal{tok: t}, nil
	}
	if strings.Count(cred, ".") != 2 {
		return principal{}, &authError{401, "credential is neither an installation token nor a JWT"}
	}
	if err := s.verifyJWT(cred, now); err != nil {
		return principal{}, &authError{401, "JWT: " + err.Error()}
	}
	if kind != authJWT {
		return principal{}, &authError{403, "an App JWT on an endpoint that needs an installation token"}
	}
	return principal{app: true}, nil
}

// credential extracts the secret of "token X" or "Bearer X".
func credential(h string) (string, bool) {
	scheme, value, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok {
		return "", false
	}
	switch strings.ToLower(scheme) {
	case "token", "bearer":
		value = strings.TrimSpace(value)
		return value, value != ""
	}
	return "", false
}

// verifyJWT applies GitHub's rules: RS256 signed by the App key, iss the App
// id (string or number), iat at most 60 s ahead, exp not past and at most
// 10 minutes after iat and after now.
func (s *Sim) verifyJWT(raw string, now time.Time) error {
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) {
		return &s.key.PublicKey, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithoutClaimsValidation(), jwt.WithJSONNumber())
	if err != nil {
		return err
	}
	iss, err := claimString(claims["iss"])
	if err != nil || iss != strconv.FormatInt(s.cfg.AppID, 10) {
		return fmt.Errorf("iss %v is not the App id %d", claims["iss"], s.cfg.AppID)
	}
	iat, err := claimInt(claims["iat"])
	if err != nil {
		return fmt.Errorf("iat: %w", err)
	}
	exp, err := claimInt(claims["exp"])
	if err != nil {
		return fmt.Errorf("exp: %w", err)
	}
	issued, expires := time.Unix(iat, 0), time.Unix(exp, 0)
	switch {
	case issued.After(now.Add(jwtMaxIATSkew)):
		return fmt.Errorf("iat %s is in the future (now %s)", issued.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
	case !expires.After(now):
		return fmt.Errorf("expired at %s (now %s)", expires.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
	case expires.Sub(issued) > jwtMaxLifetime:
		return fmt.Errorf("exp is %s after iat, more than 10 minutes", expires.Sub(issued))
	case expires.Sub(now) > jwtMaxLifetime:
		// GitHub's "Generating a JSON Web Token (JWT) for a GitHub App":
		// exp must be no more than 10 minutes into the future, however
		// late iat is.
		return fmt.Errorf("exp %s is more than 10 minutes ahead (now %s)", expires.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
	}
	return nil
}

func claimString(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	}
	return "", errors.New("missing")
}

func claimInt(v any) (int64, error) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, errors.New("missing or not a number")
	}
	i, err := n.Int64()
	if err != nil {
		return 0, fmt.Errorf("not an integer: %s", n)
	}
	return i, nil
}

// reaches says whether principal p may see repository r: GitHub hides
// repositories outside the token's installation (and outside the repositories
// the token was narrowed to) behind a 404.
func (p principal) reaches(r *repo) bool {
	if p.tok == nil || r.inst == nil || r.inst != p.tok.inst {
		return false
	}
	return p.tok.repoIDs == nil || p.tok.repoIDs[r.id]
}

// newToken mints an installation token in GitHub's format: ghs_ and 36
// alphanumerics. Must be called with s.mu held.
func (s *Sim) newToken(inst *installation, repoIDs map[int64]bool, now time.Time) (*token, error) {
	v, err := randomAlnum(36)
	if err != nil {
		return nil, err
	}
	t := &token{value: "ghs_" + v, inst: inst, repoIDs: repoIDs, expiresAt: now.Add(tokenLifetime)}
	s.st.tokens[t.value] = t
	return t, nil
}

func randomAlnum(n int) (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	max := big.NewInt(int64(len(alphabet)))
	for i := range b {
		k, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", fmt.Errorf("ghsim: random token: %w", err)
		}
		b[i] = alphabet[k.Int64()]
	}
	return string(b), nil
}

// AppJWT signs a JWT for the App as a GitHub client would, with the
// simulator's clock (iat 30 s ago, exp in 5 minutes). For tests and tools that
// call the /app endpoints directly.
func (s *Sim) AppJWT() (string, error) {
	now := s.Now()
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss": strconv.FormatInt(s.cfg.AppID, 10),
		"iat": now.Add(-30 * time.Second).Unix(),
		"exp": now.Add(5 * time.Minute).Unix(),
	})
	signed, err := t.SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("ghsim: sign JWT: %w", err)
	}
	return signed, nil
}

// InstallationToken mints an installation token without going through the
// API, like POST /app/installations/{id}/access_tokens would.
func (s *Sim) InstallationToken(installationID int64) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inst := s.st.installations[installationID]
	if inst == nil {
		return "", time.Time{}, fmt.Errorf("ghsim: no installation %d", installationID)
	}
	t, err := s.newToken(inst, nil, s.now())
	if err != nil {
		return "", time.Time{}, err
	}
	return t.value, t.expiresAt, nil
}
