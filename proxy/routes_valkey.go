package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Valkey is the RouteStore shared by several proxy nodes and the server.
// Keys, under a prefix:
//
//	<prefix>host:<host>    "<environment> <agent>"      (TTL: hostTTL or none)
//	<prefix>agent:<agent>  "<generation, 20 digits> <node>" (TTL: agentTTL)
//
// Writes of an agent's location compare generations inside Valkey (a Lua
// script), so a stale node never overwrites a fresh session's location and
// a dying session never deletes its successor's. Resolve is one round
// trip (a script reads the host entry, then its agent's location).
type Valkey struct {
	c      valkey.Client
	own    bool
	prefix string
}

// NewValkey uses an existing client; Close does not close it. prefix
// namespaces the keys (e.g. "stagely:route:").
func NewValkey(c valkey.Client, prefix string) *Valkey {
	return &Valkey{c: c, prefix: prefix}
}

// OpenValkey connects to the Valkey (or Redis 7) server at url.
func OpenValkey(ctx context.Context, url, prefix string) (*Valkey, error) {
	opt, err := valkey.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse valkey URL: %w", err)
	}
	opt.DisableCache = true
	c, err := valkey.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("connect to valkey at %v: %w", opt.InitAddress, err)
	}
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		c.Close()
		return nil, fmt.Errorf("ping valkey at %v: %w", opt.InitAddress, err)
	}
	return &Valkey{c: c, own: true, prefix: prefix}, nil
}

func (v *Valkey) hostKey(h string) string  { return v.prefix + "host:" + h }
func (v *Valkey) agentKey(a string) string { return v.prefix + "agent:" + a }

func genString(g uint64) string {
	s := strconv.FormatUint(g, 10)
	return strings.Repeat("0", 20-len(s)) + s
}

var (
	// KEYS[1] agent key, KEYS[2..] host keys; ARGV: generation (20
	// digits), node, agent ttl ms, "<environment> <agent>", host ttl ms
	// (0: none), "1" for a refresh. A refresh of a located agent only
	// extends its hosts (XX): one deleted since stays deleted.
	publishScript = valkey.NewLuaScript(`
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 20) > ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
for i = 2, #KEYS do
  local set = {'SET', KEYS[i], ARGV[4]}
  if ARGV[5] ~= '0' then table.insert(set, 'PX'); table.insert(set, ARGV[5]) end
  if ARGV[6] == '1' and cur then table.insert(set, 'XX') end
  redis.call(unpack(set))
end
return 1`)
	// KEYS[1] agent key; ARGV[1] generation (20 digits).
	releaseScript = valkey.NewLuaScript(`
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 20) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0`)
	// KEYS[1] exact host key, KEYS[2] wildcard key (or KEYS[1] again);
	// ARGV[1] the agent key prefix.
	resolveScript = valkey.NewLuaScriptReadOnly(`
local key = KEYS[1]
local h = redis.call('GET', key)
if not h then key = KEYS[2]; h = redis.call('GET', key) end
if not h then return false end
local agent = string.match(h, '^[^ ]* (.*)$')
local loc = false
if agent then loc = redis.call('GET', ARGV[1] .. agent) end
return {key, h, loc or ''}`)
)

func (v *Valkey) Publish(ctx context.Context, pubs []Publication, agentTTL, hostTTL time.Duration) error {
	if len(pubs) == 0 {
		return nil
	}
	execs := make([]valkey.LuaExec, 0, len(pubs))
	agentMS, hostMS := strconv.FormatInt(agentTTL.Milliseconds(), 10), strconv.FormatInt(max(hostTTL.Milliseconds(), 0), 10)
	for _, p := range pubs {
		if err := checkIDs(p.Environment, p.Agent); err != nil {
			return err
		}
		keys := make([]string, 0, 1+len(p.Hosts))
		keys = append(keys, v.agentKey(p.Agent))
		for _, h := range p.Hosts {
			keys = append(keys, v.hostKey(h))
		}
		refresh := "0"
		if p.Refresh {
			refresh = "1"
		}
		execs = append(execs, valkey.LuaExec{Keys: keys,
			Args: []string{genString(p.Generation), p.Node, agentMS, p.Environment + " " + p.Agent, hostMS, refresh}})
	}
	for _, r := range publishScript.ExecMulti(ctx, v.c, execs...) {
		if err := r.Error(); err != nil {
			return fmt.Errorf("publish routes: %w", err)
		}
	}
	return nil
}

func (v *Valkey) setHost(host, env, agent string, ttl time.Duration) valkey.Completed {
	set := v.c.B().Set().Key(v.hostKey(host)).Value(env + " " + agent)
	if ttl > 0 {
		return set.Px(ttl).Build()
	}
	return set.Build()
}

// checkIDs keeps spaces out of the "<environment> <agent>" value.
func checkIDs(env, agent string) error {
	if env == "" || agent == "" || strings.ContainsAny(env, " \n") || strings.ContainsAny(agent, " \n") {
		return fmt.Errorf("proxy routes: environment %q and agent %q must be non-empty and have no spaces", env, agent)
	}
	return nil
}

func (v *Valkey) Withdraw(ctx context.Context, agent string, gen uint64) error {
	if err := releaseScript.Exec(ctx, v.c, []string{v.agentKey(agent)}, []string{genString(gen)}).Error(); err != nil {
		return fmt.Errorf("withdraw agent %s: %w", agent, err)
	}
	return nil
}

func (v *Valkey) PutHost(ctx context.Context, host, env, agent string, ttl time.Duration) error {
	if err := checkIDs(env, agent); err != nil {
		return err
	}
	if err := v.c.Do(ctx, v.setHost(host, env, agent, ttl)).Error(); err != nil {
		return fmt.Errorf("put route for %s: %w", host, err)
	}
	return nil
}

func (v *Valkey) DeleteHost(ctx context.Context, host string) error {
	if err := v.c.Do(ctx, v.c.B().Del().Key(v.hostKey(host)).Build()).Error(); err != nil {
		return fmt.Errorf("delete route for %s: %w", host, err)
	}
	return nil
}

// resolveTimeout bounds one Resolve. valkey-go retries a read-only
// command after a network error until its context ends, and a request's
// context has no deadline: without it a request would wait for as long
// as Valkey is unreachable, instead of getting the 503 page.
const resolveTimeout = 2 * time.Second

func (v *Valkey) Resolve(ctx context.Context, host string) (Route, error) {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	wild := wildcardKey(host)
	k1 := v.hostKey(host)
	k2 := k1
	if wild != "" {
		k2 = v.hostKey(wild)
	}
	vals, err := resolveScript.Exec(ctx, v.c, []string{k1, k2}, []string{v.prefix + "agent:"}).ToArray()
	if valkey.IsValkeyNil(err) {
		return Route{}, ErrNoRoute
	}
	if err != nil {
		return Route{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(vals) != 3 {
		return Route{}, fmt.Errorf("resolve %s: unexpected reply of %d values", host, len(vals))
	}
	key, _ := vals[0].ToString()
	hv, _ := vals[1].ToString()
	loc, _ := vals[2].ToString()
	env, agent, ok := strings.Cut(hv, " ")
	if !ok {
		return Route{}, fmt.Errorf("resolve %s: malformed entry %q", host, hv)
	}
	r := Route{Key: strings.TrimPrefix(key, v.prefix+"host:"), Environment: env, Agent: agent}
	if loc != "" {
		g, node, ok := strings.Cut(loc, " ")
		gen, err := strconv.ParseUint(g, 10, 64)
		if !ok || err != nil {
			return Route{}, fmt.Errorf("resolve %s: malformed agent location %q", host, loc)
		}
		r.Node, r.Generation = node, gen
	}
	return r, nil
}

// Close closes the client if OpenValkey made it.
func (v *Valkey) Close() {
	if v.own {
		v.c.Close()
	}
}
