package ghclient

import (
	"container/list"
	"sync"
)

// memCache is an httpcache.Cache kept in process memory and bounded by the
// bytes it holds, evicting the least recently used entries first. It is
// in-memory on purpose: entries are whole responses, including the
// X-Varied-Authorization header httpcache records, i.e. live tokens.
type memCache struct {
	mu    sync.Mutex
	max   int64
	size  int64
	order *list.List               // front is most recently used
	items map[string]*list.Element // values are *cacheEntry
}

type cacheEntry struct {
	key string
	val []byte
}

func newMemCache(maxBytes int64) *memCache {
	return &memCache{max: maxBytes, order: list.New(), items: make(map[string]*list.Element)}
}

func entrySize(key string, val []byte) int64 { return int64(len(key) + len(val)) }

// Get returns the stored slice without copying: httpcache only parses it, and
// Set never mutates a stored slice.
func (c *memCache) Get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*cacheEntry).val, true
}

// Set stores val under key, evicting least recently used entries until the
// total fits. A response larger than the whole bound is not stored at all
// (and any older version of it is dropped), rather than flushing everything
// else to make room.
func (c *memCache) Set(key string, val []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(key)
	n := entrySize(key, val)
	if n > c.max {
		return
	}
	c.items[key] = c.order.PushFront(&cacheEntry{key: key, val: val})
	c.size += n
	for c.size > c.max {
		oldest := c.order.Back()
		c.removeLocked(oldest.Value.(*cacheEntry).key)
	}
}

func (c *memCache) Delete(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(key)
}

func (c *memCache) removeLocked(key string) {
	el, ok := c.items[key]
	if !ok {
		return
	}
	e := el.Value.(*cacheEntry)
	c.order.Remove(el)
	delete(c.items, key)
	c.size -= entrySize(e.key, e.val)
}

// bytes reports the current total, for tests.
func (c *memCache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}
