package persistence

import (
	"encoding/binary"
	"fmt"
)

// Key prefixes. Client ids are length-prefixed (u16, big-endian) inside s/
// and q/ keys so that one client's keys are exactly one prefix, whatever
// bytes the id or a filter contains.
const (
	prefixSession  = "c/" // c/<client> → sessionRec
	prefixSub      = "s/" // s/<len><client><filter> → subRec
	prefixQueue    = "q/" // q/<len><client><seq u64 BE> → refRec
	prefixMessage  = "p/" // p/<id u64 BE> → msgRec shared by queue refs
	prefixRetained = "r/" // r/<topic> → msgRec
	keySchema      = "m/schema"
	// keyCommit holds the commit number (u64 BE) of the last transaction
	// of the writer: every transaction sets it (see stateFile).
	keyCommit = "m/commit"
)

// schemaVersion is the layout version this package writes and reads.
const schemaVersion = 1

func sessionKey(client string) []byte {
	return append([]byte(prefixSession), client...)
}

func clientPrefix(prefix, client string) []byte {
	b := make([]byte, 0, len(prefix)+2+len(client)+8)
	b = append(b, prefix...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(client)))
	return append(b, client...)
}

func subKey(client, filter string) []byte {
	return append(clientPrefix(prefixSub, client), filter...)
}

func queueKey(client string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(clientPrefix(prefixQueue, client), seq)
}

func messageKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(prefixMessage), id)
}

func retainedKey(topic string) []byte {
	return append([]byte(prefixRetained), topic...)
}

// splitClientKey parses s/ and q/ keys into the client id and the rest.
func splitClientKey(key []byte, prefix string) (client string, rest []byte, err error) {
	k := key[len(prefix):]
	if len(k) < 2 {
		return "", nil, fmt.Errorf("key %q: too short", key)
	}
	n := int(binary.BigEndian.Uint16(k))
	if len(k) < 2+n {
		return "", nil, fmt.Errorf("key %q: client id length %d exceeds key", key, n)
	}
	return string(k[2 : 2+n]), k[2+n:], nil
}

func parseQueueKey(key []byte) (client string, seq uint64, err error) {
	client, rest, err := splitClientKey(key, prefixQueue)
	if err != nil {
		return "", 0, err
	}
	if len(rest) != 8 {
		return "", 0, fmt.Errorf("key %q: sequence is %d bytes, want 8", key, len(rest))
	}
	return client, binary.BigEndian.Uint64(rest), nil
}

func parseMessageKey(key []byte) (uint64, error) {
	rest := key[len(prefixMessage):]
	if len(rest) != 8 {
		return 0, fmt.Errorf("key %q: message id is %d bytes, want 8", key, len(rest))
	}
	return binary.BigEndian.Uint64(rest), nil
}
