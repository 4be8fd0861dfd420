package outbox

import "encoding/binary"

// Keys, in the persistence store's key space (listed in
// docs/persistence.md): o/<route>/<seq> (undelivered message),
// d/<route>/<seq> (dead letter), m/seq/<route> (the route's highest
// assigned seq, so seqs and thus message ids are never reused). Route names
// are [a-z0-9_-], so '/' ends them unambiguously; seqs are big-endian so key
// order is seq order.

func prefix(kind byte, route string) []byte {
	b := make([]byte, 0, 2+len(route)+1+8)
	b = append(b, kind, '/')
	b = append(b, route...)
	return append(b, '/')
}

func seqKey(kind byte, route string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(prefix(kind, route), seq)
}

func keySeq(k []byte) uint64 {
	if len(k) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k[len(k)-8:])
}

func seqMetaKey(route string) []byte {
	return append([]byte("m/seq/"), route...)
}
