package auth

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// httpRequest is the JSON body POSTed to the callout.
type httpRequest struct {
	ClientID   string `json:"client_id"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	RemoteAddr string `json:"remote_addr"`
	TLSSubject string `json:"tls_subject"`
}

// httpAuth asks an HTTP endpoint. Safe for concurrent use.
type httpAuth struct {
	url    string
	client *http.Client
	cache  *ttlCache // nil when disabled
}

func newHTTPAuth(c HTTPConfig) *httpAuth {
	a := &httpAuth{
		url: c.URL,
		client: &http.Client{
			// An own transport, so Stop can close its idle connections
			// without touching other users of http.DefaultTransport.
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			Timeout:   c.Timeout,
			// A redirect would re-send the credentials to another URL;
			// treat it as a denial instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	if c.CacheTTL > 0 && c.CacheSize > 0 {
		a.cache = newTTLCache(c.CacheSize, c.CacheTTL, time.Now)
	}
	return a
}

// check returns whether the endpoint allows req. Only definite answers (2xx
// allows; 4xx denies) are cached; transport errors and 5xx deny without
// being cached, so the next CONNECT asks again.
func (a *httpAuth) check(ctx context.Context, req httpRequest) (bool, error) {
	key := cacheKey(req.ClientID, req.Username, req.Password)
	if a.cache != nil {
		if ok, hit := a.cache.get(key); hit {
			return ok, nil
		}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return false, fmt.Errorf("http auth: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("http auth: %w", err)
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(hr)
	if err != nil {
		return false, fmt.Errorf("http auth: %w", err)
	}
	// Drain a little so the connection can be reused; never read a huge body.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		if a.cache != nil {
			a.cache.put(key, true)
		}
		return true, nil
	case resp.StatusCode >= 400 && resp.StatusCode < 500:
		if a.cache != nil {
			a.cache.put(key, false)
		}
		return false, nil
	}
	return false, fmt.Errorf("http auth: %s: status %s", a.url, resp.Status)
}

// cacheKey hashes the credentials so the cache never holds a password.
func cacheKey(clientID, username, password string) [32]byte {
	h := sha256.New()
	for _, s := range []string{clientID, username, password} {
		// Length-prefix each field so ("ab","c") and ("a","bc") differ.
		fmt.Fprintf(h, "%d:", len(s))
		h.Write([]byte(s))
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// ttlCache is a size-bounded LRU whose entries also expire after ttl.
type ttlCache struct {
	mu    sync.Mutex
	size  int
	ttl   time.Duration
	now   func() time.Time
	ll    *list.List // front = most recently used
	items map[[32]byte]*list.Element
}

type cacheEntry struct {
	key     [32]byte
	allow   bool
	expires time.Time
}

func newTTLCache(size int, ttl time.Duration, now func() time.Time) *ttlCache {
	return &ttlCache{size: size, ttl: ttl, now: now, ll: list.New(), items: make(map[[32]byte]*list.Element)}
}

func (c *ttlCache) get(k [32]byte) (allow, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return false, false
	}
	e := el.Value.(*cacheEntry)
	if !c.now().Before(e.expires) {
		c.ll.Remove(el)
		delete(c.items, k)
		return false, false
	}
	c.ll.MoveToFront(el)
	return e.allow, true
}

func (c *ttlCache) put(k [32]byte, allow bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp := c.now().Add(c.ttl)
	if el, ok := c.items[k]; ok {
		e := el.Value.(*cacheEntry)
		e.allow, e.expires = allow, exp
		c.ll.MoveToFront(el)
		return
	}
	c.items[k] = c.ll.PushFront(&cacheEntry{key: k, allow: allow, expires: exp})
	for c.ll.Len() > c.size {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*cacheEntry).key)
	}
}

func (c *ttlCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
