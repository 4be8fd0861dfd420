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
	for _, seed := range [][]byte{
		append([]byte{5}, issue501...),
		{5, 0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01},                  // truncated filter
		{4, 0x82, 0x04, 0x00, 0x01, 0x00, 0x01},                        // v3 filter without QoS
		{5, 0x30, 0x80, 0x80, 0x80, 0x80, 0x01},                        // 5-byte remaining length
		{5, 0x30, 0x03, 0x00, 0x05, 'a'},                               // topic length past the end
		{5, 0x32, 0x08, 0x00, 0x01, 'a', 0x00, 0x01, 0x7f, 0xff, 0xff}, // property length past the end
		{5, 0xa2, 0x02, 0x00, 0x01},                                    // UNSUBSCRIBE with no filter
		{5, 0xf0, 0x01, 0xff},                                          // AUTH with a bad property
		{4, 0x62, 0x02, 0x00},                                          // truncated PUBREL
		{3, 0x10, 0x00},                                                // second CONNECT, empty
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
