package load

import (
	"encoding/binary"
	"math/bits"
	"time"
)

// HeaderSize is the size of the header at the start of every payload.
const HeaderSize = 24

// Header identifies a message: which run and publisher sent it, its
// per-publisher sequence number and when it was encoded.
type Header struct {
	Nonce     uint32 // distinguishes this run from leftovers of earlier ones
	Publisher uint32
	Seq       uint64
	SentNanos int64 // UnixNano at encode time
}

// Put writes h into the first HeaderSize bytes of b.
func (h Header) Put(b []byte) {
	binary.BigEndian.PutUint32(b[0:], h.Nonce)
	binary.BigEndian.PutUint32(b[4:], h.Publisher)
	binary.BigEndian.PutUint64(b[8:], h.Seq)
	binary.BigEndian.PutUint64(b[16:], uint64(h.SentNanos))
}

// ParseHeader reads a Header from the start of b.
func ParseHeader(b []byte) (Header, bool) {
	if len(b) < HeaderSize {
		return Header{}, false
	}
	return Header{
		Nonce:     binary.BigEndian.Uint32(b[0:]),
		Publisher: binary.BigEndian.Uint32(b[4:]),
		Seq:       binary.BigEndian.Uint64(b[8:]),
		SentNanos: int64(binary.BigEndian.Uint64(b[16:])),
	}, true
}

// seqSet is a growable bitmap of sequence numbers.
type seqSet struct {
	words []uint64
	n     int64 // members
	max   int64 // highest member, -1 when empty
}

func newSeqSet() *seqSet { return &seqSet{max: -1} }

// add inserts s and reports whether it was new.
func (s *seqSet) add(seq uint64) bool {
	w := int(seq >> 6)
	if w >= len(s.words) {
		if w > 1<<26 { // 4 G sequence numbers: a corrupt header, not a real run
			return false
		}
		s.words = append(s.words, make([]uint64, w+1-len(s.words)+len(s.words)/2)...)
	}
	bit := uint64(1) << (seq & 63)
	if s.words[w]&bit != 0 {
		return false
	}
	s.words[w] |= bit
	s.n++
	if int64(seq) > s.max {
		s.max = int64(seq)
	}
	return true
}

func (s *seqSet) has(seq uint64) bool {
	w := int(seq >> 6)
	return w < len(s.words) && s.words[w]&(1<<(seq&63)) != 0
}

// missing counts members of want that are not in s.
func (s *seqSet) missing(want *seqSet) int64 {
	var n int64
	for i, w := range want.words {
		var have uint64
		if i < len(s.words) {
			have = s.words[i]
		}
		n += int64(bits.OnesCount64(w &^ have))
	}
	return n
}

// missingBelow counts sequence numbers in [0, limit) not in s.
func (s *seqSet) missingBelow(limit uint64) int64 {
	var have int64
	for i, w := range s.words {
		lo := uint64(i) * 64
		if lo >= limit {
			break
		}
		if limit-lo < 64 {
			w &= (1 << (limit - lo)) - 1
		}
		have += int64(bits.OnesCount64(w))
	}
	return int64(limit) - have
}

// Histogram is a log-linear latency histogram: exact below 128 ns, then 128
// buckets per power of two, under 0.8 % relative error, in fixed memory.
type Histogram struct {
	counts [58 << histSub]uint64
	n      uint64
	sum    float64
	max    int64
}

const histSub = 7

func histIndex(v uint64) int {
	if v < 1<<histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSub - 1
	return (shift+1)<<histSub + int(v>>shift) - 1<<histSub
}

// histValue is the upper bound of bucket i, so percentiles never
// under-report.
func histValue(i int) uint64 {
	if i < 1<<histSub {
		return uint64(i)
	}
	shift := i>>histSub - 1
	m := uint64(i&(1<<histSub-1)) + 1<<histSub
	return (m+1)<<shift - 1
}

// Record adds one latency; negative values (clock steps) count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[histIndex(uint64(v))]++
	h.n++
	h.sum += float64(v)
	h.max = max(h.max, v)
}

// Merge adds o's samples to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns the q-quantile (0 < q <= 1), never above Max.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(int64(histValue(i)), h.max))
		}
	}
	return time.Duration(h.max)
}

// Max is the largest sample.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the average sample.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}
