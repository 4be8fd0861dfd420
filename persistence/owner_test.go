package persistence

import (
	"maps"
	"sync"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// recordingOwners owns every session as "owner-of-ID" and records what the
// hook reports at load.
type recordingOwners struct {
	mu       sync.Mutex
	restored map[string]string
}

func (o *recordingOwners) Owner(cl *mqtt.Client) (string, bool) { return "owner-of-" + cl.ID, true }

func (o *recordingOwners) Restored(id, owner string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.restored[id] = owner
}

// TestSessionOwnerStoredAndRestored: the owner is stored with a session
// and reported at load; a session stored without one (before owners, or
// with authentication off) is reported with its user name (none here).
func TestSessionOwnerStoredAndRestored(t *testing.T) {
	dir := t.TempDir()
	withOwners := func(o *recordingOwners) func(*Hook) {
		return func(h *Hook) { h.SetSessionOwners(o) }
	}
	run := func(adjust func(*Hook), id string) {
		st := openStore(t, Config{Dir: dir})
		b := startBrokerWith(t, st, nil, adjust)
		if id != "" {
			offlineSubscriber(t, b, id, "o/"+id)
		}
		b.close()
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	run(nil, "legacy")
	run(withOwners(&recordingOwners{restored: map[string]string{}}), "owned")
	got := &recordingOwners{restored: map[string]string{}}
	run(withOwners(got), "")
	if want := map[string]string{"legacy": "", "owned": "owner-of-owned"}; !maps.Equal(got.restored, want) {
		t.Fatalf("owners reported at load %v, want %v", got.restored, want)
	}
}
