package persistence

import "fmt"

// Encoder appends a record in the store's binary encoding (the one codec.go
// uses for its own records), for other packages that keep records in the
// store (the bridge outbox): a version byte and a kind byte, then fields;
// integers are varints, byte strings are uvarint-length prefixed. It never
// fails. The zero value starts an empty record.
type Encoder struct{ e enc }

// NewEncoder returns an Encoder appending to buf (which may be nil).
func NewEncoder(buf []byte) Encoder { return Encoder{enc{buf}} }

// Header appends the record's version and kind bytes.
func (e *Encoder) Header(version, kind byte) { e.e.b = append(e.e.b, version, kind) }

// Byte appends one byte.
func (e *Encoder) Byte(v byte) { e.e.u8(v) }

// Uvarint appends an unsigned varint.
func (e *Encoder) Uvarint(v uint64) { e.e.uv(v) }

// Varint appends a signed (zig-zag) varint.
func (e *Encoder) Varint(v int64) { e.e.sv(v) }

// Bytes appends v with its length.
func (e *Encoder) Bytes(v []byte) { e.e.bytes(v) }

// Str appends v with its length.
func (e *Encoder) Str(v string) { e.e.str(v) }

// Record returns the encoded record.
func (e *Encoder) Record() []byte { return e.e.b }

// Decoder reads what an Encoder wrote. The first error sticks and later
// reads return zero values, so a caller checks End once at the end. It never
// panics and never allocates more than the record's length for a length it
// reads.
type Decoder struct{ d dec }

// NewDecoder returns a Decoder over b. Bytes copies out of b; Str copies.
func NewDecoder(b []byte) Decoder { return Decoder{dec{b: b}} }

// Header checks the version and kind bytes: another version or kind is an
// error, never guessed at.
func (d *Decoder) Header(version, kind byte) {
	if len(d.d.b) < 2 {
		d.d.fail(errTruncated)
		return
	}
	if d.d.b[0] != version {
		d.d.fail(fmt.Errorf("%w %d (this Ferry reads version %d)", errBadVersion, d.d.b[0], version))
		return
	}
	if d.d.b[1] != kind {
		d.d.fail(fmt.Errorf("record kind %d, want %d", d.d.b[1], kind))
		return
	}
	d.d.b = d.d.b[2:]
}

// Byte reads one byte.
func (d *Decoder) Byte() byte { return d.d.u8() }

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 { return d.d.uv() }

// Varint reads a signed varint.
func (d *Decoder) Varint() int64 { return d.d.sv() }

// Bytes reads a length-prefixed byte string and returns a copy, nil when
// empty.
func (d *Decoder) Bytes() []byte { return d.d.bytes() }

// Str reads a length-prefixed string.
func (d *Decoder) Str() string { return d.d.str() }

// Remaining is how many bytes are left: an upper bound for a count of
// fields still to read, checked before allocating for them.
func (d *Decoder) Remaining() int { return len(d.d.b) }

// Fail records err unless an earlier error stuck.
func (d *Decoder) Fail(err error) { d.d.fail(err) }

// Err returns the first error so far.
func (d *Decoder) Err() error { return d.d.err }

// End returns the first error, or an error when bytes are left over.
func (d *Decoder) End() error { return d.d.end() }
