package persistence

// TEMPORARY debugging trace; delete before finishing.

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

var (
	traceMu sync.Mutex
	traceF  *os.File
)

func init() {
	if p := os.Getenv("FERRY_TRACE"); p != "" {
		traceF, _ = os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	}
}

func tr(format string, args ...any) {
	if traceF == nil {
		return
	}
	traceMu.Lock()
	fmt.Fprintf(traceF, "%d %s %s\n", os.Getpid(), time.Now().Format("15:04:05.000000"), fmt.Sprintf(format, args...))
	traceMu.Unlock()
}

func pseq(pk *packets.Packet) uint64 {
	if len(pk.Payload) == 8 {
		return binary.BigEndian.Uint64(pk.Payload)
	}
	return 0
}

func clDesc(cl *mqtt.Client) string {
	return fmt.Sprintf("%s/%p closed=%v over=%v", cl.ID, cl, cl.Closed(), cl.IsTakenOver())
}
