package certs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/valkey-io/valkey-go"
)

// StorageConfig configures a ValkeyStorage. Every proxy that shares
// certificates must use the same server and the same Prefix.
type StorageConfig struct {
	// URL of the Valkey (or Redis 7) server, for example
	// redis://127.0.0.1:6379/0. Required.
	URL string

	// Prefix namespaces every key this storage writes; it is wrapped in a
	// hash tag ({Prefix}) so that, on a cluster, all keys live in one slot
	// and the scripts below may touch them together. Default
	// "stagely:certs".
	Prefix string

	// LockTTL is how long a lock survives its holder's last refresh. The
	// holder refreshes it every LockTTL/3 for as long as it lives, so this
	// bounds how long a crashed holder can block the others, not how long
	// a lock may be held. Default 10s.
	LockTTL time.Duration

	// LockPoll is the longest pause between two attempts to take a lock
	// somebody else holds; attempts start at 25ms apart and back off to
	// this. Default 500ms.
	LockPoll time.Duration
}

func (c *StorageConfig) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "stagely:certs"
	}
	if c.LockTTL == 0 {
		c.LockTTL = 10 * time.Second
	}
	if c.LockPoll == 0 {
		c.LockPoll = 500 * time.Millisecond
	}
}

// ErrLockLost is returned by Unlock (and RenewLockLease) when the lock
// expired while it was held — the holder could not refresh it for LockTTL —
// and may since have been taken by another process.
var ErrLockLost = errors.New("certs: lock expired while held")

// ValkeyStorage is a certmagic.Storage in Valkey, shared by several proxy
// processes: certificates, keys, the ACME account and distributed
// challenge data are stored once, and Lock serializes issuance across
// processes, so a certificate is ordered once however many proxies need
// it.
//
// Keys have certmagic's file-system semantics: "a/b/c" is a file whose
// directories are "a" and "a/b". A file is a hash ({Prefix}:f:<key>) with
// its value and modification time; a sorted set ({Prefix}:idx) holds
// every file key, so a directory's contents are one ZRANGEBYLEX. Unlike
// FileStorage, a directory exists only while it holds a file: deleting
// the last file under it removes it.
//
// A lock is a key ({Prefix}:lock:<name>) set with NX and a random token,
// expiring after LockTTL unless its holder refreshes it. A process that
// dies holding a lock blocks the others for at most LockTTL. Within one
// process, holders of the same name also queue on an in-process mutex, so
// they never poll Valkey against each other.
type ValkeyStorage struct {
	c   valkey.Client
	cfg StorageConfig
	tag string // "{Prefix}"

	mu    sync.Mutex
	names map[string]*nameLock
}

// nameLock is this process's state for one lock name.
type nameLock struct {
	sem  chan struct{} // capacity 1: taken by the in-process holder
	refs int           // goroutines holding or waiting; removed at 0

	// Set while held in Valkey.
	token string
	stop  context.CancelFunc
	done  chan struct{}
}

var _ certmagic.Storage = (*ValkeyStorage)(nil)
var _ certmagic.TryLocker = (*ValkeyStorage)(nil)
var _ certmagic.LockLeaseRenewer = (*ValkeyStorage)(nil)

// OpenValkeyStorage connects to the server at cfg.URL. Close releases the
// locks still held and the connection.
func OpenValkeyStorage(ctx context.Context, cfg StorageConfig) (*ValkeyStorage, error) {
	cfg.setDefaults()
	if cfg.URL == "" {
		return nil, errors.New("certs: StorageConfig.URL is required")
	}
	if cfg.LockTTL < 30*time.Millisecond {
		return nil, fmt.Errorf("certs: StorageConfig.LockTTL %v is too short to refresh", cfg.LockTTL)
	}
	opt, err := valkey.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("certs: parse valkey URL: %w", err)
	}
	// Other processes write these keys; a client-side cache would serve
	// stale certificates and locks.
	opt.DisableCache = true
	c, err := valkey.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("certs: connect to valkey at %v: %w", opt.InitAddress, err)
	}
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		c.Close()
		return nil, fmt.Errorf("certs: ping valkey at %v: %w", opt.InitAddress, err)
	}
	return &ValkeyStorage{
		c:     c,
		cfg:   cfg,
		tag:   "{" + cfg.Prefix + "}",
		names: make(map[string]*nameLock),
	}, nil
}

// Close stops refreshing, and releases, every lock this storage still
// holds, then closes the connection. The storage is unusable afterwards.
func (s *ValkeyStorage) Close() {
	s.mu.Lock()
	var held []string
	for name, nl := range s.names {
		if nl.token != "" {
			held = append(held, name)
		}
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, name := range held {
		_ = s.Unlock(ctx, name) // best effort: the TTL cleans up otherwise
	}
	s.c.Close()
}

func (s *ValkeyStorage) fileKey(key string) string { return s.tag + ":f:" + key }
func (s *ValkeyStorage) indexKey() string          { return s.tag + ":idx" }
func (s *ValkeyStorage) lockKey(name string) string {
	return s.tag + ":lock:" + name
}

// normKey trims the slashes certmagic's keys never carry at either end.
func normKey(key string) string { return strings.Trim(key, "/") }

// below returns the ZRANGEBYLEX bounds of every key strictly below dir:
// "a/" <= k < "a0", because '0' is the byte after '/'. The root ("")
// holds everything.
func below(dir string) (lo, hi string) {
	if dir == "" {
		return "-", "+"
	}
	return "[" + dir + "/", "(" + dir + "0"
}

var storeScript = valkey.NewLuaScript(`
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'm', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return 1`)

// Store puts value at key, replacing any value there.
func (s *ValkeyStorage) Store(ctx context.Context, key string, value []byte) error {
	key = normKey(key)
	if key == "" {
		return errors.New("certs: store: empty key")
	}
	now := strconv.FormatInt(time.Now().UnixNano(), 10)
	err := storeScript.Exec(ctx, s.c,
		[]string{s.fileKey(key), s.indexKey()},
		[]string{string(value), now, key}).Error()
	if err != nil {
		return fmt.Errorf("certs: store %s: %w", key, err)
	}
	return nil
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *ValkeyStorage) Load(ctx context.Context, key string) ([]byte, error) {
	key = normKey(key)
	v, err := s.c.Do(ctx, s.c.B().Hget().Key(s.fileKey(key)).Field("v").Build()).AsBytes()
	if valkey.IsValkeyNil(err) {
		return nil, fmt.Errorf("certs: load %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("certs: load %s: %w", key, err)
	}
	return v, nil
}

// deleteScript removes the file at ARGV[2] and every file below it.
// KEYS[1] is the index; ARGV[1] the file key prefix; ARGV[3], ARGV[4] the
// bounds of the keys below. The file keys are not declared in KEYS: they
// share the index's hash tag, hence its slot.
var deleteScript = valkey.NewLuaScript(`
local n = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('DEL', ARGV[1] .. ARGV[2])
local kids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[3], ARGV[4])
for _, k in ipairs(kids) do
  redis.call('DEL', ARGV[1] .. k)
end
if #kids > 0 then
  redis.call('ZREMRANGEBYLEX', KEYS[1], ARGV[3], ARGV[4])
end
return n + #kids`)

// Delete removes key and, if key is a directory, everything below it. A
// key that does not exist is not an error.
func (s *ValkeyStorage) Delete(ctx context.Context, key string) error {
	key = normKey(key)
	lo, hi := below(key)
	err := deleteScript.Exec(ctx, s.c,
		[]string{s.indexKey()},
		[]string{s.fileKey(""), key, lo, hi}).Error()
	if err != nil {
		return fmt.Errorf("certs: delete %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key is a file or a directory holding files.
func (s *ValkeyStorage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// Stat describes key: a file with its size and modification time, or a
// directory (IsTerminal false).
func (s *ValkeyStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = normKey(key)
	lo, hi := below(key)
	fk := s.fileKey(key)
	res := s.c.DoMulti(ctx,
		s.c.B().Hget().Key(fk).Field("m").Build(),
		s.c.B().Hstrlen().Key(fk).Field("v").Build(),
		s.c.B().Zrangebylex().Key(s.indexKey()).Min(lo).Max(hi).Limit(0, 1).Build(),
	)
	for _, r := range res {
		if err := r.Error(); err != nil && !valkey.IsValkeyNil(err) {
			return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, err)
		}
	}
	if m, err := res[0].AsInt64(); err == nil {
		size, _ := res[1].AsInt64()
		return certmagic.KeyInfo{Key: key, Modified: time.Unix(0, m), Size: size, IsTerminal: true}, nil
	}
	if kids, _ := res[2].AsStrSlice(); len(kids) > 0 {
		return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, fs.ErrNotExist)
}

// List returns the keys below dir, as certmagic's FileStorage does: with
// recursive false, the files and directories directly in dir; with
// recursive true, every file and directory below it. Keys are full paths
// ("dir/x"), in depth-first, name order. A dir that does not exist is an
// error wrapping fs.ErrNotExist; a dir that is a file lists nothing.
func (s *ValkeyStorage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	dir = normKey(dir)
	lo, hi := below(dir)
	files, err := s.c.Do(ctx, s.c.B().Zrangebylex().Key(s.indexKey()).Min(lo).Max(hi).Build()).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("certs: list %s: %w", dir, err)
	}
	if len(files) == 0 {
		if dir != "" {
			if info, err := s.Stat(ctx, dir); err == nil && info.IsTerminal {
				return nil, nil
			}
		}
		return nil, fmt.Errorf("certs: list %s: %w", dir, fs.ErrNotExist)
	}
	base := ""
	if dir != "" {
		base = dir + "/"
	}
	seen := make(map[string]bool)
	var keys []string
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for _, f := range files {
		parts := strings.Split(strings.TrimPrefix(f, base), "/")
		if !recursive {
			add(base + parts[0])
			continue
		}
		for i := range parts {
			add(base + strings.Join(parts[:i+1], "/"))
		}
	}
	slices.SortFunc(keys, comparePaths)
	return keys, nil
}

// comparePaths orders keys component by component, the order of a
// depth-first walk of a directory tree.
func comparePaths(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

// String names the storage in certmagic's logs.
func (s *ValkeyStorage) String() string { return "valkey storage " + s.tag }

// --- locks ------------------------------------------------------------------

var refreshScript = valkey.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

var releaseScript = valkey.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// Lock takes the lock called name, waiting while another process or
// goroutine holds it, until ctx ends. A holder that stops refreshing (a
// crashed process) loses the lock after LockTTL.
func (s *ValkeyStorage) Lock(ctx context.Context, name string) error {
	return s.lock(ctx, name, true)
}

// TryLock takes the lock called name if nobody holds it, without waiting.
func (s *ValkeyStorage) TryLock(ctx context.Context, name string) (bool, error) {
	err := s.lock(ctx, name, false)
	if errors.Is(err, errHeld) {
		return false, nil
	}
	return err == nil, err
}

var errHeld = errors.New("lock held elsewhere")

func (s *ValkeyStorage) lock(ctx context.Context, name string, wait bool) error {
	s.mu.Lock()
	nl := s.names[name]
	if nl == nil {
		nl = &nameLock{sem: make(chan struct{}, 1)}
		s.names[name] = nl
	}
	nl.refs++
	s.mu.Unlock()

	if err := s.lockLocal(ctx, nl, wait); err != nil {
		s.release(name, nl, false)
		return err
	}
	token, err := s.lockRemote(ctx, name, wait)
	if err != nil {
		s.release(name, nl, true)
		return err
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.mu.Lock()
	nl.token, nl.stop, nl.done = token, stop, done
	s.mu.Unlock()
	go s.refresh(rctx, s.lockKey(name), token, done)
	return nil
}

// lockLocal queues on the in-process mutex for the name.
func (s *ValkeyStorage) lockLocal(ctx context.Context, nl *nameLock, wait bool) error {
	if !wait {
		select {
		case nl.sem <- struct{}{}:
			return nil
		default:
			return errHeld
		}
	}
	select {
	case nl.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("certs: wait for lock: %w", ctx.Err())
	}
}

// lockRemote sets the lock key, polling with backoff while it exists.
func (s *ValkeyStorage) lockRemote(ctx context.Context, name string, wait bool) (string, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	key := s.lockKey(name)
	pause := 25 * time.Millisecond
	for {
		err := s.c.Do(ctx, s.c.B().Set().Key(key).Value(token).Nx().Px(s.cfg.LockTTL).Build()).Error()
		if err == nil {
			return token, nil
		}
		if !valkey.IsValkeyNil(err) {
			// The SET may have been carried out though its answer was lost
			// (ctx ended, the connection broke): undo it, or the lock stays
			// taken, by nobody, for LockTTL.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = releaseScript.Exec(uctx, s.c, []string{key}, []string{token}).Error()
			cancel()
			return "", fmt.Errorf("certs: take lock %s: %w", name, err)
		}
		if !wait {
			return "", errHeld
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return "", fmt.Errorf("certs: wait for lock %s: %w", name, ctx.Err())
		}
		pause = min(2*pause, s.cfg.LockPoll)
	}
}

// refresh extends the lock every LockTTL/3 until stopped or until it
// finds the lock is no longer its own.
func (s *ValkeyStorage) refresh(ctx context.Context, key, token string, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.cfg.LockTTL / 3)
	defer t.Stop()
	ttl := strconv.FormatInt(s.cfg.LockTTL.Milliseconds(), 10)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := refreshScript.Exec(ctx, s.c, []string{key}, []string{token, ttl}).AsInt64()
		if err == nil && n == 0 {
			return // lost; Unlock reports it
		}
		// A failed call is retried at the next tick: the lock lives for
		// LockTTL, three ticks.
	}
}

// release drops a reference to nl, freeing the in-process mutex if taken.
func (s *ValkeyStorage) release(name string, nl *nameLock, taken bool) {
	if taken {
		<-nl.sem
	}
	s.mu.Lock()
	nl.refs--
	if nl.refs == 0 {
		delete(s.names, name)
	}
	s.mu.Unlock()
}

// Unlock releases the lock called name, which this storage must hold. It
// returns ErrLockLost if the lock had expired (and was perhaps taken by
// someone else, whose lock it leaves alone).
func (s *ValkeyStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	nl := s.names[name]
	if nl == nil || nl.token == "" {
		s.mu.Unlock()
		return fmt.Errorf("certs: unlock %s: not held by this process", name)
	}
	token, stop, done := nl.token, nl.stop, nl.done
	nl.token, nl.stop, nl.done = "", nil, nil
	s.mu.Unlock()

	stop()
	<-done
	n, err := releaseScript.Exec(ctx, s.c, []string{s.lockKey(name)}, []string{token}).AsInt64()
	s.release(name, nl, true)
	if err != nil {
		return fmt.Errorf("certs: unlock %s: %w (it expires within %v)", name, err, s.cfg.LockTTL)
	}
	if n == 0 {
		return fmt.Errorf("certs: unlock %s: %w", name, ErrLockLost)
	}
	return nil
}

// RenewLockLease confirms this process still holds the lock called name
// and extends it by LockTTL. certmagic calls it before each retry of a
// long issuance; the holder's refresher keeps the lock alive anyway, so
// leaseDuration is not needed and only the ownership check matters: an
// error stops an issuance that is no longer protected by the lock.
func (s *ValkeyStorage) RenewLockLease(ctx context.Context, name string, leaseDuration time.Duration) error {
	s.mu.Lock()
	var token string
	if nl := s.names[name]; nl != nil {
		token = nl.token
	}
	s.mu.Unlock()
	if token == "" {
		return fmt.Errorf("certs: renew lock %s: not held by this process", name)
	}
	ttl := strconv.FormatInt(s.cfg.LockTTL.Milliseconds(), 10)
	n, err := refreshScript.Exec(ctx, s.c, []string{s.lockKey(name)}, []string{token, ttl}).AsInt64()
	if err != nil {
		return fmt.Errorf("certs: renew lock %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("certs: renew lock %s: %w", name, ErrLockLost)
	}
	return nil
}
