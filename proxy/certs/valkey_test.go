package certs_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/valkey-io/valkey-go"

	"github.com/stagely-dev/stagely/proxy/certs"
)

// valkeyURL is the server scripts/services.sh starts; a test that cannot
// reach it fails rather than skips.
func valkeyURL() string {
	if u := os.Getenv("STAGELY_TEST_VALKEY_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// testPrefix is a key prefix no other test run shares.
func testPrefix(t *testing.T) string {
	return fmt.Sprintf("stagely:certs-test:%s:%d", t.Name(), time.Now().UnixNano())
}

// openStorage opens a ValkeyStorage under prefix, removed when the test
// ends.
func openStorage(t *testing.T, prefix string, lockTTL time.Duration) *certs.ValkeyStorage {
	t.Helper()
	ctx := context.Background()
	s, err := certs.OpenValkeyStorage(ctx, certs.StorageConfig{URL: valkeyURL(), Prefix: prefix, LockTTL: lockTTL})
	if err != nil {
		t.Fatalf("valkey is required for this test (run scripts/services.sh): %v", err)
	}
	t.Cleanup(func() {
		_ = s.Delete(ctx, "")
		s.Close()
	})
	return s
}

// rawClient is a plain Valkey client, to look at and tamper with the
// storage's keys as another process would.
func rawClient(t *testing.T) valkey.Client {
	t.Helper()
	opt, err := valkey.ParseURL(valkeyURL())
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := valkey.NewClient(opt)
	if err != nil {
		t.Fatalf("valkey is required for this test (run scripts/services.sh): %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// The files certmagic keeps, in the shape it keeps them.
var sampleFiles = []string{
	"acme/ca.test-dir/users/ops@example.com/ops.json",
	"acme/ca.test-dir/users/ops@example.com/ops.key",
	"certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.crt",
	"certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.json",
	"certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.key",
	"certificates/ca.test-dir/b-x.test/b-x.test.crt",
	"certificates/ca.test-dir/b.test/b.test.crt",
	"ocsp/b.test-1234",
}

func fill(t *testing.T, s certmagic.Storage) {
	t.Helper()
	for i, k := range sampleFiles {
		if err := s.Store(context.Background(), k, []byte(strings.Repeat("x", i+1))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStorageBehavesLikeFileStorage runs the same calls against
// certmagic's FileStorage and ValkeyStorage and expects the same answers.
func TestStorageBehavesLikeFileStorage(t *testing.T) {
	ctx := context.Background()
	file := &certmagic.FileStorage{Path: t.TempDir()}
	vk := openStorage(t, testPrefix(t), 0)
	fill(t, file)
	fill(t, vk)

	t.Run("List", func(t *testing.T) {
		tests := []struct {
			dir       string
			recursive bool
		}{
			{"", false},
			{"", true},
			{"certificates", false},
			{"certificates", true},
			{"certificates/ca.test-dir", false},
			{"certificates/ca.test-dir/wildcard_.a.test", false},
			{"certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.crt", false}, // a file
			{"acme", true},
			{"cert", false},    // a string prefix is not a directory prefix
			{"missing", false}, // does not exist
			{"missing", true},
		}
		for _, tc := range tests {
			want, wantErr := file.List(ctx, tc.dir, tc.recursive)
			got, gotErr := vk.List(ctx, tc.dir, tc.recursive)
			if !slices.Equal(got, want) {
				t.Errorf("List(%q, %v) = %q, FileStorage says %q", tc.dir, tc.recursive, got, want)
			}
			if errors.Is(gotErr, fs.ErrNotExist) != errors.Is(wantErr, fs.ErrNotExist) || (gotErr == nil) != (wantErr == nil) {
				t.Errorf("List(%q, %v) error = %v, FileStorage says %v", tc.dir, tc.recursive, gotErr, wantErr)
			}
		}
	})

	t.Run("StatAndExists", func(t *testing.T) {
		for _, key := range []string{
			"certificates/ca.test-dir/b.test/b.test.crt",
			"certificates/ca.test-dir/b.test",
			"certificates",
			"certificates/ca.test-dir/b.te",
			"missing",
		} {
			want, wantErr := file.Stat(ctx, key)
			got, gotErr := vk.Stat(ctx, key)
			if (gotErr == nil) != (wantErr == nil) || errors.Is(gotErr, fs.ErrNotExist) != errors.Is(wantErr, fs.ErrNotExist) {
				t.Errorf("Stat(%q) error = %v, FileStorage says %v", key, gotErr, wantErr)
				continue
			}
			if gotErr == nil {
				if got.Key != want.Key || got.IsTerminal != want.IsTerminal || (got.IsTerminal && got.Size != want.Size) {
					t.Errorf("Stat(%q) = %+v, FileStorage says %+v", key, got, want)
				}
				if got.IsTerminal && time.Since(got.Modified) > time.Minute {
					t.Errorf("Stat(%q).Modified = %v, want about now", key, got.Modified)
				}
			}
			if g, w := vk.Exists(ctx, key), file.Exists(ctx, key); g != w {
				t.Errorf("Exists(%q) = %v, FileStorage says %v", key, g, w)
			}
		}
	})

	t.Run("Delete", func(t *testing.T) {
		tests := []struct {
			name, key string
			gone      []string // keys that must not exist afterwards
			kept      string   // a neighbour that must survive
		}{
			{"a missing key is not an error", "missing/key", nil, "ocsp/b.test-1234"},
			// (Not the last file of its directory: FileStorage keeps the
			// emptied directory, ValkeyStorage has no empty directories.)
			{"a file goes", "certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.json",
				[]string{"certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.json"},
				"certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.crt"},
			{"a directory goes with everything below it", "certificates/ca.test-dir/wildcard_.a.test",
				[]string{"certificates/ca.test-dir/wildcard_.a.test", "certificates/ca.test-dir/wildcard_.a.test/wildcard_.a.test.key"},
				"certificates/ca.test-dir/b.test/b.test.crt"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				for name, s := range map[string]certmagic.Storage{"file": file, "valkey": vk} {
					if err := s.Delete(ctx, tc.key); err != nil {
						t.Fatalf("%s: Delete(%q) = %v", name, tc.key, err)
					}
					for _, k := range tc.gone {
						if s.Exists(ctx, k) {
							t.Errorf("%s: %q exists after Delete(%q)", name, k, tc.key)
						}
						if _, err := s.Load(ctx, k); !errors.Is(err, fs.ErrNotExist) {
							t.Errorf("%s: Load(%q) = %v, want fs.ErrNotExist", name, k, err)
						}
					}
					if !s.Exists(ctx, tc.kept) {
						t.Errorf("%s: neighbour %q was deleted by Delete(%q)", name, tc.kept, tc.key)
					}
				}
				want, _ := file.List(ctx, "certificates", true)
				got, _ := vk.List(ctx, "certificates", true)
				if !slices.Equal(got, want) {
					t.Errorf("after Delete(%q): List = %q, FileStorage says %q", tc.key, got, want)
				}
			})
		}
	})
}

func TestStoreThenLoadReturnsLastValueByteForByte(t *testing.T) {
	ctx := context.Background()
	s := openStorage(t, testPrefix(t), 0)
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	for _, v := range [][]byte{all, []byte("second"), {}} {
		if err := s.Store(ctx, "k/v", v); err != nil {
			t.Fatal(err)
		}
		got, err := s.Load(ctx, "k/v")
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(v) {
			t.Fatalf("Load = %q, want %q", got, v)
		}
		info, err := s.Stat(ctx, "k/v")
		if err != nil || info.Size != int64(len(v)) || !info.IsTerminal {
			t.Fatalf("Stat = %+v, %v; want a file of %d bytes", info, err, len(v))
		}
	}
}

// TestLockSerializesHolders has holders in two storages (two processes'
// worth) and several goroutines each take one lock; no two are ever
// inside together, and every one gets in.
func TestLockSerializesHolders(t *testing.T) {
	prefix := testPrefix(t)
	stores := []*certs.ValkeyStorage{openStorage(t, prefix, 0), openStorage(t, prefix, 0)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var inside, entered atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		s := stores[i%2]
		wg.Go(func() {
			if err := s.Lock(ctx, "issue_cert_*.a.test"); err != nil {
				errs <- err
				return
			}
			if n := inside.Add(1); n != 1 {
				errs <- fmt.Errorf("%d holders inside the lock", n)
			}
			entered.Add(1)
			time.Sleep(20 * time.Millisecond)
			inside.Add(-1)
			if err := s.Unlock(ctx, "issue_cert_*.a.test"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := entered.Load(); n != 8 {
		t.Errorf("%d of 8 holders got the lock", n)
	}
}

// TestLockIsKeptPastItsTTLWhileTheHolderLives: the holder's refresher
// keeps the lock alive, so a waiter gets it only at Unlock.
func TestLockIsKeptPastItsTTLWhileTheHolderLives(t *testing.T) {
	prefix := testPrefix(t)
	const ttl = 300 * time.Millisecond
	a, b := openStorage(t, prefix, ttl), openStorage(t, prefix, ttl)
	ctx := context.Background()
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	released := make(chan time.Time, 1)
	go func() {
		time.Sleep(4 * ttl)
		released <- time.Now()
		if err := a.Unlock(ctx, "l"); err != nil {
			t.Error(err)
		}
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.Lock(wctx, "l"); err != nil {
		t.Fatal(err)
	}
	got := time.Now()
	if rel := <-released; got.Before(rel) {
		t.Errorf("waiter got the lock %v before the holder released it", rel.Sub(got))
	}
	if err := b.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

// TestLockOfCrashedHolderExpires kills a process holding a lock; the
// lock is free again within its TTL.
func TestLockOfCrashedHolderExpires(t *testing.T) {
	prefix := testPrefix(t)
	const ttl = time.Second
	s := openStorage(t, prefix, ttl)
	ctx := context.Background()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHolderEnv+"="+prefix)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("lock holder process said %q, %v", line, err)
	}
	if ok, err := s.TryLock(ctx, "l"); ok || err != nil {
		t.Fatalf("TryLock while another process holds the lock = %v, %v; want false, nil", ok, err)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 5*ttl)
	defer cancel()
	if err := s.Lock(wctx, "l"); err != nil {
		t.Fatalf("lock of a killed holder never freed: %v", err)
	}
	if waited := time.Since(killed); waited > ttl+time.Second {
		t.Errorf("lock of a killed holder freed after %v, want within its TTL %v", waited, ttl)
	}
	if err := s.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

// lockHolderEnv makes the test binary a process that takes lock "l"
// under the prefix it names, says "locked", and waits to be killed.
const lockHolderEnv = "STAGELY_CERTS_TEST_LOCK_HOLDER"

func holdLockUntilKilled(prefix string) {
	ctx := context.Background()
	s, err := certs.OpenValkeyStorage(ctx, certs.StorageConfig{URL: valkeyURL(), Prefix: prefix, LockTTL: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := s.Lock(ctx, "l"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("locked")
	select {}
}

func TestLockWaitEndsWithContext(t *testing.T) {
	prefix := testPrefix(t)
	a, b := openStorage(t, prefix, 0), openStorage(t, prefix, 0)
	ctx := context.Background()
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	defer a.Unlock(ctx, "l")

	tests := []struct {
		name string
		s    *certs.ValkeyStorage
	}{
		{"another process", b},
		{"the same process", a},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
			defer cancel()
			start := time.Now()
			if err := tc.s.Lock(wctx, "l"); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Lock on a held lock = %v, want context.DeadlineExceeded", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Lock returned %v after its context ended", d)
			}
			if ok, err := tc.s.TryLock(ctx, "l"); ok || err != nil {
				t.Errorf("TryLock on a held lock = %v, %v; want false, nil", ok, err)
			}
		})
	}
}

func TestUnlockOfALostLockReportsItAndSparesTheNewHolder(t *testing.T) {
	prefix := testPrefix(t)
	s := openStorage(t, prefix, 0)
	c := rawClient(t)
	ctx := context.Background()
	if err := s.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	// The lock expired and someone else took it.
	key := "{" + prefix + "}:lock:l"
	if err := c.Do(ctx, c.B().Set().Key(key).Value("someone-else").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.RenewLockLease(ctx, "l", time.Minute); !errors.Is(err, certs.ErrLockLost) {
		t.Errorf("RenewLockLease = %v, want ErrLockLost", err)
	}
	if err := s.Unlock(ctx, "l"); !errors.Is(err, certs.ErrLockLost) {
		t.Errorf("Unlock = %v, want ErrLockLost", err)
	}
	if v, err := c.Do(ctx, c.B().Get().Key(key).Build()).ToString(); err != nil || v != "someone-else" {
		t.Errorf("new holder's lock = %q, %v; want it untouched", v, err)
	}
	_ = c.Do(ctx, c.B().Del().Key(key).Build())
	if err := s.Unlock(ctx, "never-held"); err == nil {
		t.Error("Unlock of a lock never held succeeded")
	}
}

// slowAnswers relays connections to target, holding each of the
// server's answers for delay: a distant or busy Valkey.
func slowAnswers(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(s, c); s.Close() }()
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := s.Read(buf)
					time.Sleep(delay)
					if _, werr := c.Write(buf[:n]); werr != nil || err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// A Lock whose context ends while its SET is on the way fails; the lock
// must then be free, not taken by nobody for LockTTL. The SET is not
// always sent before the context ends, so several names are tried.
func TestLockGivenUpOnLeavesTheLockFree(t *testing.T) {
	prefix := testPrefix(t)
	u, err := url.Parse(valkeyURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Host = slowAnswers(t, u.Host, 300*time.Millisecond)
	ctx := context.Background()
	slow, err := certs.OpenValkeyStorage(ctx, certs.StorageConfig{URL: u.String(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	other := openStorage(t, prefix, 0)
	for i := range 8 {
		name := fmt.Sprintf("issue_cert_%d.a.test", i)
		lctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		lockErr := slow.Lock(lctx, name)
		cancel()
		if lockErr == nil {
			t.Fatal("Lock succeeded although its context ended before Valkey's answer")
		}
		time.Sleep(400 * time.Millisecond) // a SET that was sent has been carried out
		if ok, err := other.TryLock(ctx, name); err != nil || !ok {
			t.Fatalf("name %d: Lock failed (%v), yet the lock is taken: TryLock = %v, %v", i, lockErr, ok, err)
		}
		other.Unlock(ctx, name)
	}
}
