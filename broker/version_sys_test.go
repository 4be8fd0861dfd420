package broker_test

import (
	"testing"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/internal/testutil"
	mqtt "github.com/mochi-mqtt/server/v2"
)

// $SYS/broker/version is Ferry's version, not the mochi engine's.
func TestSysVersionIsFerrys(t *testing.T) {
	b := testutil.StartBroker(t)
	if got := b.B.Server().Info.Version; got != broker.Version() || got == mqtt.Version {
		t.Errorf("$SYS/broker/version is %q; want Ferry's %q (mochi's is %q)", got, broker.Version(), mqtt.Version)
	}
}
