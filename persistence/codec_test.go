package persistence

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

var (
	sampleSession = sessionRec{
		ProtocolVersion: 5, Clean: true, ExpiryFlag: true, ExpiryInterval: 3600, DisconnectedAt: 1_700_000_000,
		Username: []byte("user"), Listener: "tcp", AuthMethod: "SCRAM", AuthData: []byte{0, 1, 2},
		RequestProblemInfo: 1, RequestProblemInfoFlag: true, RequestResponseInfo: 1, ReceiveMaximum: 65535,
		TopicAliasMaximum: 10, MaximumPacketSize: 1 << 20, User: []packets.UserProperty{{Key: "k", Val: "v"}},
		WillFlag: true, WillRetain: true, WillQos: 2, WillDelay: 30, WillTopic: "will/t", WillPayload: []byte("bye"),
		WillUser: []packets.UserProperty{{Key: "a", Val: ""}},
	}
	sampleSub = subRec{Qos: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2, Identifier: 268435455}
	sampleMsg = msgRec{
		Qos: 1, Retain: true, ProtocolVersion: 5, Created: 1_700_000_001, Expiry: 1_700_000_061,
		Topic: "a/b", Origin: "pub", Payload: []byte("hello\x00world"), PayloadFormat: 1, PayloadFormatFlag: true,
		MessageExpiryInterval: 60, ContentType: "text/plain", ResponseTopic: "resp", CorrelationData: []byte{9},
		User: []packets.UserProperty{{Key: "x", Val: "y"}, {Key: "x", Val: "z"}},
	}
	sampleRef = refRec{State: refPublish, Qos: 2, Retain: true, PacketID: 65535, MsgID: 1 << 40, SubIDs: []int{1, 7}}
)

// ownedSession is a session record with an owner (version 2).
var ownedSession = sessionRec{ProtocolVersion: 4, Username: []byte("name"), OwnerSet: true, Owner: "cert-cn"}

func TestRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		encode func([]byte) []byte
		decode func([]byte) (any, error)
		want   any
	}{
		{"session full", sampleSession.appendTo, func(b []byte) (any, error) { return decodeSession(b) }, sampleSession},
		{"session zero", (&sessionRec{}).appendTo, func(b []byte) (any, error) { return decodeSession(b) }, sessionRec{}},
		{"session with owner", ownedSession.appendTo, func(b []byte) (any, error) { return decodeSession(b) }, ownedSession},
		{"subscription", sampleSub.appendTo, func(b []byte) (any, error) { return decodeSub(b) }, sampleSub},
		{"message full", sampleMsg.appendTo, func(b []byte) (any, error) { return decodeMessage(b) }, sampleMsg},
		{"message empty", (&msgRec{}).appendTo, func(b []byte) (any, error) { return decodeMessage(b) }, msgRec{}},
		{"ref publish", sampleRef.appendTo, func(b []byte) (any, error) { return decodeRef(b) }, sampleRef},
		{"ref pubrel", (&refRec{State: refPubrel, Qos: 2, PacketID: 7}).appendTo, func(b []byte) (any, error) { return decodeRef(b) }, refRec{State: refPubrel, Qos: 2, PacketID: 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.decode(tt.encode(nil))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestRecordDecodeErrors(t *testing.T) {
	good := sampleMsg.appendTo(nil)
	withVersion := append([]byte{9}, good[1:]...)
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"newer version", withVersion, "unknown record version 9"},
		{"wrong kind", sampleSub.appendTo(nil), "record kind 2, want 3"},
		{"truncated", good[:len(good)-3], "truncated"},
		{"trailing", append(append([]byte(nil), good...), 0), "trailing bytes"},
		{"bad qos", (&msgRec{Qos: 3}).appendTo(nil), "message qos 3"},
		{"huge length", []byte{recordVersion, kindMessage, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, "truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeMessage(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := decodeMessage(withVersion); !errors.Is(err, errBadVersion) {
		t.Fatalf("version error %v is not errBadVersion", err)
	}
	if _, err := decodeRef((&refRec{State: refPublish, Qos: 1}).appendTo(nil)); err == nil {
		t.Fatal("a queued publish without a message id decoded")
	}
}

// TestSessionRecordVersion1: session records written before sessions had
// owners (version 1: the version 2 layout without the owner) still load,
// without an owner; a newer version is refused.
func TestSessionRecordVersion1(t *testing.T) {
	v2 := sampleSession.appendTo(nil)
	v1 := append([]byte{recordVersion}, v2[1:len(v2)-1]...) // no owner flags byte
	got, err := decodeSession(v1)
	if err != nil {
		t.Fatalf("version 1 session record: %v", err)
	}
	if !reflect.DeepEqual(got, sampleSession) || got.OwnerSet {
		t.Fatalf("version 1 record decoded as %+v", got)
	}
	if _, err := decodeSession(append([]byte{recordVersion}, ownedSession.appendTo(nil)[1:]...)); err == nil {
		t.Error("version 1 record with an owner decoded")
	}
	newer := ownedSession.appendTo(nil)
	newer[0] = sessionVersion + 1
	if _, err := decodeSession(newer); !errors.Is(err, errBadVersion) {
		t.Errorf("newer session record: %v, want %v", err, errBadVersion)
	}
}

// FuzzRecordDecode: no input panics any decoder, and whatever decodes
// re-encodes to the same bytes (the encoding is canonical).
func FuzzRecordDecode(f *testing.F) {
	for _, seed := range [][]byte{
		sampleSession.appendTo(nil), sampleSub.appendTo(nil), sampleMsg.appendTo(nil), sampleRef.appendTo(nil),
		(&sessionRec{}).appendTo(nil), (&refRec{State: refPubrec, PacketID: 1}).appendTo(nil), {}, {1}, {1, 3, 0},
		ownedSession.appendTo(nil),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if r, err := decodeSession(in); err == nil {
			roundTrip(t, r, r.appendTo, func(b []byte) (any, error) { return decodeSession(b) })
		}
		if r, err := decodeSub(in); err == nil {
			roundTrip(t, r, r.appendTo, func(b []byte) (any, error) { return decodeSub(b) })
		}
		if r, err := decodeMessage(in); err == nil {
			roundTrip(t, r, r.appendTo, func(b []byte) (any, error) { return decodeMessage(b) })
			_ = r.packet()
		}
		if r, err := decodeRef(in); err == nil {
			roundTrip(t, r, r.appendTo, func(b []byte) (any, error) { return decodeRef(b) })
		}
	})
}

// roundTrip checks that a decoded record re-encodes to bytes that decode to
// the same record. (Bytes may differ: unused flag bits and non-minimal
// varints are accepted on input.)
func roundTrip(t *testing.T, r any, encode func([]byte) []byte, decode func([]byte) (any, error)) {
	t.Helper()
	got, err := decode(encode(nil))
	if err != nil {
		t.Fatalf("re-encoded %+v does not decode: %v", r, err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("round trip changed the record:\n got %+v\nwant %+v", got, r)
	}
}
