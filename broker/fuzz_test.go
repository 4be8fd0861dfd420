package broker_test

import (
	"net"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testutil"
	"github.com/mochi-mqtt/server/v2/packets"
)

// FuzzPacketsAfterConnect writes arbitrary bytes after a valid CONNECT into
// a real listener, then checks that the broker still serves a second client
// end to end. The first byte of the input picks the protocol version.
//
//	go test -run '^$' -fuzz FuzzPacketsAfterConnect ./broker/
func FuzzPacketsAfterConnect(f *testing.F) {
	// The engine's catalogue of malformed packets, each after a CONNECT of
	// its version, plus what only the wire shows: a packet cut short (the
	// broker waits for the rest), and a second CONNECT.
	for _, tc := range packets.TMalformedPackets {
		if tc.Raw[0]>>4 != packets.Connect {
			f.Add(append([]byte{tc.Version}, tc.Raw...))
		}
	}
	for _, seed := range [][]byte{
		{4, 0x62, 0x02, 0x00}, // PUBREL cut short
		{3, 0x10, 0x00},       // second CONNECT, empty
	} {
		f.Add(seed)
	}
	b := testutil.StartBroker(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		version := data[0]%3 + 3
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		connect := testutil.Encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ClientIdentifier: "fuzz", Clean: true, Keepalive: 30}}, version)
		_, _ = c.Write(append(connect, data[1:]...))
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		buf := make([]byte, 256)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		_ = c.Close()

		ok := testutil.DialRaw(t, b.Addr, 5)
		ok.Connect("", packets.Properties{})
		ok.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		ok.Expect(packets.Pingresp)
		_ = ok.Conn.Close()
	})
}
