package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// StaticRoutes is the Authenticator of the standalone proxy: a route file
// maps hostnames to agent tokens, one "HOSTNAME TOKEN" pair per line
// (blank lines and lines starting with # are ignored). Every hostname
// listed with a token is granted to the agent that presents it; the
// agent's identity is derived from the token's hash, so the file is the
// whole configuration.
//
//	# hostname           token
//	app.localhost        s3cret-token-1
//	api.app.localhost    s3cret-token-1
//	*.demo.localhost     s3cret-token-2
type StaticRoutes struct {
	byHash map[string]tunnel.Identity // sha256(token) → identity
	name   string                     // the file, for error messages
	lines  []routeLine                // in the file's order
}

// routeLine is a hostname or pattern and the line of the file naming it.
type routeLine struct {
	host string
	n    int
}

// ParseStaticRoutes reads a route file; name is used in error messages.
func ParseStaticRoutes(name string, r io.Reader) (*StaticRoutes, error) {
	hosts := map[string][]string{} // token hash → hostnames
	seen := map[string]int{}       // hostname → line
	var lines []routeLine
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if n == 1 {
			text = strings.TrimPrefix(text, "\ufeff") // the byte-order mark some editors write
		}
		line := strings.TrimSpace(text)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: want \"HOSTNAME TOKEN\", got %d fields", name, n, len(f))
		}
		host, ok := normalizePattern(f[0])
		// The messages name no field: with the columns swapped, the
		// first one is the token, and errors end up in logs.
		if !ok {
			return nil, fmt.Errorf("%s:%d: the first field is not a hostname or *.parent pattern (want \"HOSTNAME TOKEN\")", name, n)
		}
		if prev, dup := seen[host]; dup {
			return nil, fmt.Errorf("%s:%d: this hostname is already listed on line %d", name, n, prev)
		}
		seen[host] = n
		lines = append(lines, routeLine{host, n})
		if len(f[1]) < 16 {
			return nil, fmt.Errorf("%s:%d: the token is shorter than 16 characters (want \"HOSTNAME TOKEN\")", name, n)
		}
		h := tokenHash(f[1])
		hosts[h] = append(hosts[h], host)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	// The file is read once, at start: without a route the proxy could
	// only ever answer 404.
	if len(lines) == 0 {
		return nil, fmt.Errorf("%s: no routes: want lines of \"HOSTNAME TOKEN\"", name)
	}
	s := &StaticRoutes{byHash: map[string]tunnel.Identity{}, name: name, lines: lines}
	for h, hs := range hosts {
		sort.Strings(hs)
		id := "static-" + h[:16]
		s.byHash[h] = tunnel.Identity{Agent: id, Environment: id, Hostnames: hs}
	}
	return s, nil
}

// Prime puts every hostname and pattern of the file in table with ttl, so
// that a listed host whose agent is not connected answers 502, not 404.
func (s *StaticRoutes) Prime(ctx context.Context, table RouteStore, ttl time.Duration) error {
	for _, id := range s.byHash {
		for _, h := range id.Hostnames {
			if err := table.PutHost(ctx, h, id.Environment, id.Agent, ttl); err != nil {
				return fmt.Errorf("route %s: %w", h, err)
			}
		}
	}
	return nil
}

func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Authenticate returns the identity of the hostnames listed with token.
// Tokens are compared by their SHA-256, so the lookup's timing says
// nothing about the tokens in the file.
func (s *StaticRoutes) Authenticate(_ context.Context, token string) (tunnel.Identity, error) {
	id, ok := s.byHash[tokenHash(token)]
	if !ok {
		return tunnel.Identity{}, tunnel.ErrBadToken
	}
	return id, nil
}

// CheckDomain refuses a hostname or pattern that a proxy serving only
// single labels under domain would never route: its visitors would get
// 404 with nothing to say why. An empty domain routes every host.
func (s *StaticRoutes) CheckDomain(domain string) error {
	if domain == "" {
		return nil
	}
	for _, l := range s.lines {
		parent, pattern := strings.CutPrefix(l.host, "*.")
		if pattern && parent != domain || !pattern && !underDomain(l.host, domain) {
			return fmt.Errorf("%s:%d: the hostname is not a single label under the preview domain %s, which alone is routed", s.name, l.n, domain)
		}
	}
	return nil
}

// Len is the number of agents (distinct tokens) in the file.
func (s *StaticRoutes) Len() int { return len(s.byHash) }

// normalizePattern accepts a hostname or a "*.parent" pattern.
func normalizePattern(p string) (string, bool) {
	if parent, ok := strings.CutPrefix(p, "*."); ok {
		h, ok := normalizeHost(parent)
		if !ok || strings.Contains(p, ":") {
			return "", false
		}
		return "*." + h, true
	}
	if strings.Contains(p, ":") {
		return "", false
	}
	return normalizeHost(p)
}
