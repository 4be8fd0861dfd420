// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

package mqtt

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Refusal logging: a connection ended for a bad packet (a Malformed Packet or
// a Protocol Error) is logged on one line of bounded size, and at most
// refusalLogBurst lines are written at once and refusalLogRate a second after
// that. What the limit holds back is counted and reported on one line a
// second later. A client, or a fuzzer, sending garbage as fast as it can
// connects then costs the log a few lines a second, never a dump of each
// packet.
const (
	refusalLogRate  = 10  // lines per second, sustained
	refusalLogBurst = 20  // lines at once
	refusalMaxField = 128 // bytes of a client-chosen string (client id) or error text logged
)

// The messages of refusal log lines, for a log handler that has its own
// rate limits to let these through: they are limited here already.
const (
	LogRefusedMessage    = "refused bad packet; connection closed"
	LogSuppressedMessage = "refused connections not logged (rate limit)"
)

// refusalLog is a token bucket for refusal lines. The zero value is ready.
type refusalLog struct {
	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
	report     *time.Timer // reports suppressed, once armed
}

// allow takes a token; false means the line is suppressed and counted.
func (r *refusalLog) allow(now time.Time, reportSuppressed func(int)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last.IsZero() {
		r.tokens = refusalLogBurst
	} else {
		r.tokens = min(refusalLogBurst, r.tokens+now.Sub(r.last).Seconds()*refusalLogRate)
	}
	r.last = now
	if r.tokens >= 1 {
		r.tokens--
		return true
	}
	r.suppressed++
	if r.report == nil {
		r.report = time.AfterFunc(time.Second, func() {
			r.mu.Lock()
			n := r.suppressed
			r.suppressed = 0
			r.report = nil
			r.mu.Unlock()
			reportSuppressed(n)
		})
	}
	return false
}

// stop disarms a pending report (the server is closing).
func (r *refusalLog) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.report != nil {
		r.report.Stop()
		r.report = nil
	}
}

// BadPacket reports whether err ends a connection for a bad packet: it
// carries the reason code Malformed Packet (0x81) or Protocol Error (0x82).
// The server logs each such refusal itself (rate-limited, see refusalLog),
// so an embedding application need not log it again.
func BadPacket(err error) bool {
	code, ok := packets.ReasonCode(err)
	return ok && (code.Code == packets.ErrMalformedPacket.Code || code.Code == packets.ErrProtocolViolation.Code)
}

// logRefusal logs that cl's connection is refused or ended for err, found in
// a packet of type pkType: one line, bounded, rate-limited. It names the
// client, the reason code and the packet type, and for a packet that failed
// to decode, its length and first bytes in hex (DecodeErrorHead at most).
func (s *Server) logRefusal(cl *Client, err error, pkType byte) {
	if !s.refusals.allow(time.Now(), func(n int) {
		s.Log.Warn(LogSuppressedMessage, "count", n)
	}) {
		return
	}
	args := make([]any, 0, 18)
	args = append(args, "client", clip(cl.ID), "remote", cl.Net.Remote, "listener", cl.Net.Listener)
	if v := cl.Properties.ProtocolVersion; v > 0 {
		args = append(args, "protocol", v)
	}
	if code, ok := packets.ReasonCode(err); ok {
		args = append(args, "code", fmt.Sprintf("0x%02x", code.Code))
	}
	args = append(args, "error", clip(err.Error()))
	var de *packets.DecodeError
	if errors.As(err, &de) {
		pkType = de.Type
		args = append(args, "packet", packets.PacketNames[pkType], "length", de.Len)
		// The bytes, to tell what the client sent, unless they may hold
		// credentials (CONNECT, AUTH) or application data (PUBLISH).
		if pkType != packets.Connect && pkType != packets.Auth && pkType != packets.Publish {
			args = append(args, "head", de.HexHead())
		}
	} else if name, ok := packets.PacketNames[pkType]; ok && pkType != packets.Reserved {
		args = append(args, "packet", name)
	}
	s.Log.Warn(LogRefusedMessage, args...)
}

// clip bounds a string that the client chose, or that holds what it sent.
func clip(s string) string {
	if len(s) <= refusalMaxField {
		return s
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:refusalMaxField], len(s))
}

// refuseConnect answers a CONNECT that could not be read or decoded (err):
// an MQTT 5 client gets a CONNACK with the reason code [MQTT-4.13.1-1], an
// MQTT 3.1.1 one only the close [MQTT-3.1.4-1]. A connection that ended
// before a whole packet (a port scan, a timeout) is not a refusal.
func (s *Server) refuseConnect(cl *Client, pk packets.Packet, err error) {
	code, ok := packets.ReasonCode(err)
	if !ok || code.Code < packets.ErrUnspecifiedError.Code {
		return
	}
	if pk.FixedHeader.Type == packets.Connect && pk.ProtocolVersion >= 3 && pk.ProtocolVersion <= 5 {
		cl.Properties.ProtocolVersion = pk.ProtocolVersion // for the log line and the CONNACK
	}
	s.logRefusal(cl, err, packets.Connect)
	if cl.Properties.ProtocolVersion == 5 {
		_ = s.SendConnack(cl, code, false, nil)
	}
}

// refuseRead ends a connection whose reading stopped at err, after CONNECT:
// for a packet that could not be decoded (or was too large), an MQTT 5
// client gets DISCONNECT with the reason code [MQTT-4.13.1-1] and a bad
// packet is logged. Errors a packet's processing returned were answered and
// logged by receivePacket, which closes the client; so were those of hooks
// that disconnected it. Other errors of OnPacketRead hooks end the
// connection as upstream does, without a DISCONNECT.
func (s *Server) refuseRead(cl *Client, err error) {
	if cl.Closed() {
		return
	}
	code, ok := packets.ReasonCode(err)
	if !ok || !(BadPacket(err) || code.Code == packets.ErrPacketTooLarge.Code) {
		return
	}
	if BadPacket(err) {
		s.logRefusal(cl, err, packets.Reserved)
	}
	if cl.Properties.ProtocolVersion == 5 {
		_ = s.DisconnectClient(cl, code)
	}
}

// v3ConnackCode maps the reason code of a refused CONNECT to the return code
// MQTT 3.1.1 has for it (3.2.2.3). ok is false when 3.1.1 has none: the
// server must then close the connection without a CONNACK [MQTT-3.2.2-6],
// as it must for a CONNECT that does not conform [MQTT-3.1.4-1].
func v3ConnackCode(reason packets.Code) (packets.Code, bool) {
	if v3, ok := packets.V5CodesToV3[reason]; ok {
		return v3, true
	}
	switch reason.Code {
	case packets.ErrUnsupportedProtocolVersion.Code:
		return packets.Err3UnsupportedProtocolVersion, true
	case packets.ErrClientIdentifierNotValid.Code:
		return packets.Err3ClientIdentifierNotValid, true
	case packets.ErrServerUnavailable.Code, packets.ErrServerBusy.Code, packets.ErrServerShuttingDown.Code,
		packets.ErrQuotaExceeded.Code, packets.ErrUseAnotherServer.Code, packets.ErrServerMoved.Code,
		packets.ErrConnectionRateExceeded.Code:
		return packets.Err3ServerUnavailable, true
	case packets.ErrBadUsernameOrPassword.Code, packets.ErrNotAuthorized.Code, packets.ErrBanned.Code,
		packets.ErrBadAuthenticationMethod.Code:
		return packets.Err3NotAuthorized, true
	}
	return packets.Code{}, false
}
