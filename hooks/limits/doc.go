// Package limits is Ferry's resource-limit mochi hook: it keeps one client
// from costing the broker too much.
//
// The hook checks, per client:
//
//   - at CONNECT: the client identifier's length and pattern (refused with
//     CONNACK 0x85, MQTT 3 return code 0x02), the will topic as for a
//     PUBLISH (CONNACK 0x90; MQTT 3 closed), and an overload guard on the
//     process's goroutine count and heap in use (CONNACK 0x89 server busy,
//     MQTT 3 return code 0x03 server unavailable);
//   - on every PUBLISH: wildcards in the topic name, the topic's length and
//     depth (DISCONNECT 0x90), and the client's message and byte rate
//     (throttled, or DISCONNECT 0x96);
//   - on every SUBSCRIBE: each filter's length and depth (DISCONNECT 0x8F)
//     and the client's number of subscriptions (DISCONNECT 0x97).
//
// MQTT 3 has no DISCONNECT from the server, so an MQTT 3 client that breaks
// a limit after CONNECT has its connection closed.
//
// # Where the checks run
//
// Packet checks run in mochi's OnPacketRead, on the client's own read
// goroutine, before mochi processes the packet. That is why throttling
// works: while the hook waits for tokens the broker reads nothing more from
// that connection, the socket's receive buffer fills and TCP pushes back on
// the publisher. Other clients are not affected. A wait longer than
// MaxThrottleWait disconnects the client instead, and closing the broker
// (Hook.Stop) ends every wait at once.
//
// # Concurrency
//
// A Hook's methods are safe for concurrent use. Per-client state (token
// buckets) exists only when a rate limit is on; it is created at the
// client's first PUBLISH and removed in OnDisconnect. With rate limits off
// the PUBLISH path takes no lock and does not allocate.
package limits
