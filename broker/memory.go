package broker

import (
	"runtime"
	"runtime/debug"
	"time"
)

// memoryCheckEvery is how often the broker looks for memory to give back
// (returnMemory).
const memoryCheckEvery = 15 * time.Second

// returnMemory gives the operating system back the memory a burst left
// free: thousands of clients that connected, were woken at once or left
// together. Go's runtime keeps freed memory for reuse and returns it only
// as the heap's goal shrinks, which, with idle connections allocating
// nothing, waits for the forced collection every two minutes and then goes
// slowly: 600 MB stayed resident for minutes after 19,000 clients left. When
// the free memory the runtime holds is over half of what is in use
// (garbage included) and over 64 MiB, it collects and returns it now: at
// most one forced collection per check, a small cost next to what a busy
// broker collects anyway.
func (b *Broker) returnMemory() {
	if returnFreeMemory() {
		b.log.Debug("returned free memory to the system")
	}
}

// returnFreeMemory collects and returns the runtime's free memory to the
// system if it holds enough of it (see returnMemory), and reports whether
// it did.
func returnFreeMemory() bool {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	free := ms.HeapIdle - ms.HeapReleased
	if free <= 64<<20 || free <= ms.HeapInuse/2 {
		return false
	}
	debug.FreeOSMemory()
	return true
}
