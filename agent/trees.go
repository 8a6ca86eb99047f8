package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/stagely-dev/stagely/agent/containers"
	"github.com/stagely-dev/stagely/agent/protocol"
)

// A container's bind mount of a directory of the repository holds the
// directory the path named when the container started: a tree swapped in
// at src later does not change what it sees, and removing the tree it
// replaced empties the mount. So a deploy keeps the tree it replaces, as
// retired/<since>-<until> (when it was at src, in Unix nanoseconds), while
// a running container that started in that time may mount it. A deploy
// that fails before any such container started puts the replaced tree
// back at src: a container that restarts later (its restart policy, a
// reboot) then mounts the files of the deploy it belongs to.

// startLag bounds how long after a container mounted its bind mounts the
// engine records that it started: one that started that soon after a
// swap may hold the tree swapped out.
const startLag = 10 * time.Second

// swap puts the staged tree at src and retires the one it replaces.
func (x *run) swap() error {
	now := time.Now().UnixNano()
	if _, err := os.Stat(x.p.src); err == nil {
		if err := os.MkdirAll(x.p.retired, 0o700); err != nil {
			return fmt.Errorf("retire the previous tree: %w", err)
		}
		old := filepath.Join(x.p.retired, fmt.Sprintf("%d-%d", x.since(), now))
		if err := os.Rename(x.p.src, old); err != nil {
			return fmt.Errorf("retire the previous tree: %w", err)
		}
		x.replaced = old
	}
	if err := os.Rename(x.p.staging, x.p.src); err != nil {
		if x.replaced != "" && os.Rename(x.replaced, x.p.src) == nil {
			x.replaced = ""
		}
		return fmt.Errorf("swap in the new tree: %w", err)
	}
	x.swapped = time.Unix(0, now)
	return x.setSince(now)
}

// since returns when the tree at src was put there, or 0 when that is
// not known, which keeps the tree the longest once it is retired.
func (x *run) since() int64 {
	b, err := os.ReadFile(x.p.since)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(string(b), 10, 64)
	return n
}

// setSince records when the tree at src was put there. A record it could
// not write is removed: one too late would let a tree a container mounts
// go once retired.
func (x *run) setSince(n int64) error {
	if err := os.WriteFile(x.p.since, []byte(strconv.FormatInt(n, 10)), 0o600); err != nil {
		os.Remove(x.p.since)
		return fmt.Errorf("record when the tree was swapped in: %w", err)
	}
	return nil
}

// settleTrees keeps, once the deploy has run compose up or failed before,
// the retired trees a running container may still mount, and removes the
// others. After a successful up none is mounted: every container that
// mounts the repository was started by it or restarted by
// refreshTreeMounts. Its failures cost only disk, so they fail nothing.
func (x *run) settleTrees(ctx context.Context, upSucceeded bool) {
	if x.swapped.IsZero() {
		return
	}
	// A deploy cut short by a newer one still settles its trees.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	note := func(text string) {
		x.r.Log(protocol.LogLine{Time: time.Now(), Stream: protocol.StreamAgent, Text: text})
	}
	var starts []time.Time
	if !upSucceeded {
		cs, err := x.e.cfg.Docker.Containers(ctx, x.project)
		if err != nil {
			note("keep the previous trees of the repository: " + err.Error())
			return
		}
		starts = x.treeStarts(cs)
		if err := x.rollBack(starts); err != nil {
			note("put the previous tree of the repository back: " + err.Error())
		}
	}
	entries, err := os.ReadDir(x.p.retired)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		note("remove previous trees of the repository: " + err.Error())
	}
	for _, de := range entries {
		if mounted(de.Name(), starts) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(x.p.retired, de.Name())); err != nil {
			note("remove a previous tree of the repository: " + err.Error())
		}
	}
}

// rollBack puts the replaced tree back at src when no container started
// since the swap, so none mounts the new tree.
func (x *run) rollBack(starts []time.Time) error {
	if x.replaced == "" {
		return nil
	}
	for _, s := range starts {
		if !s.Before(x.swapped) {
			return nil
		}
	}
	var since int64
	if _, err := fmt.Sscanf(filepath.Base(x.replaced), "%d-", &since); err != nil {
		return fmt.Errorf("%s: %w", x.replaced, err)
	}
	// The staging directory is free again: the new tree goes there, out
	// of the way, until the previous one is back.
	if err := os.Rename(x.p.src, x.p.staging); err != nil {
		return err
	}
	if err := os.Rename(x.replaced, x.p.src); err != nil {
		if err2 := os.Rename(x.p.staging, x.p.src); err2 != nil {
			return fmt.Errorf("%w; and the new tree could not go back to %s: %v", err, x.p.src, err2)
		}
		return err
	}
	x.replaced = ""
	if err := x.setSince(since); err != nil {
		return err
	}
	// The override may name services only the new tree's compose files
	// have, which makes `compose down` refuse the previous files: Destroy
	// goes by the project's labels instead.
	if err := os.Remove(x.p.invocation); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.RemoveAll(x.p.staging)
}

// treeStarts returns when the running containers that bind-mount a
// directory of the repository started.
func (x *run) treeStarts(cs []containers.Container) []time.Time {
	root, err := filepath.Abs(x.p.src)
	if err != nil {
		root = x.p.src
	}
	var starts []time.Time
	for _, c := range cs {
		if c.State != "running" && c.State != "paused" {
			continue // a container that is not running mounts nothing
		}
		for _, b := range c.Binds {
			if rel, err := filepath.Rel(root, b); err == nil && filepath.IsLocal(rel) || rel == "." {
				starts = append(starts, c.StartedAt)
				break
			}
		}
	}
	return starts
}

// mounted reports whether a container that started at one of starts may
// mount the retired tree of the name given.
func mounted(name string, starts []time.Time) bool {
	var since, until int64
	if _, err := fmt.Sscanf(name, "%d-%d", &since, &until); err != nil {
		return false // not a tree the agent retired
	}
	for _, s := range starts {
		if n := s.UnixNano(); n >= since && n < until+int64(startLag) {
			return true
		}
	}
	return false
}
