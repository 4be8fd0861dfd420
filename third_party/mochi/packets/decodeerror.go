// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package packets

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// DecodeErrorHead is how many bytes of a refused packet's body a DecodeError
// keeps: enough to recognise the packet in a log line, bounded so that a
// flood of refused packets cannot flood the log.
const DecodeErrorHead = 64

// DecodeError is a packet a decoder refused. It unwraps to the cause, whose
// Code (found with errors.As) is the reason code the spec prescribes:
// Malformed Packet (0x81) or Protocol Error (0x82) for most.
type DecodeError struct {
	Err  error  // why, wrapping a Code
	Head []byte // the first DecodeErrorHead bytes at most of the packet's body, copied
	Len  int    // the body's full length
	Type byte   // the packet type
}

// decodeError wraps err, from decoding a packet of type t whose body is buf,
// in a *DecodeError; nil stays nil.
func decodeError(t byte, buf []byte, err error) error {
	if err == nil {
		return nil
	}
	return &DecodeError{
		Type: t,
		Err:  err,
		Head: append([]byte(nil), buf[:min(len(buf), DecodeErrorHead)]...),
		Len:  len(buf),
	}
}

// Error names the packet type and the reason.
func (e *DecodeError) Error() string {
	return fmt.Sprintf("%s packet: %v", PacketNames[e.Type], e.Err)
}

// Unwrap returns the cause.
func (e *DecodeError) Unwrap() error { return e.Err }

// HexHead is Head in hex, with "..." when the body was longer.
func (e *DecodeError) HexHead() string {
	if e.Len > len(e.Head) {
		return hex.EncodeToString(e.Head) + "..."
	}
	return hex.EncodeToString(e.Head)
}

// ReasonCode returns the reason code carried by err (a Code anywhere in
// its chain) and true, or false when err carries none (a network error).
func ReasonCode(err error) (Code, bool) {
	var code Code
	if errors.As(err, &code) {
		return code, true
	}
	return Code{}, false
}

// isSharedFilter is mochi's IsSharedFilter (the root package), which this
// package cannot import: "$share" as the first level, in any case.
func isSharedFilter(filter string) bool {
	level, _, _ := strings.Cut(filter, "/")
	return strings.EqualFold(level, "$share")
}
