package broker

import (
	"runtime/debug"
	"testing"
)

func TestVersionFromBuildInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"release", debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, "v1.4.0"},
		{"checkout", debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261203093545-b8c4e8a9d4e2+dirty"}},
			"v0.0.0-20261203093545-b8c4e8a9d4e2+dirty"},
		{"commit only", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "b8c4e8a9d4e25e189f81d0d7f1e9ce31f040a9c9"}, {Key: "vcs.modified", Value: "false"}}},
			"devel-b8c4e8a9d4e2"},
		{"modified commit", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "b8c4e8a9d4e25e189f81d0d7f1e9ce31f040a9c9"}, {Key: "vcs.modified", Value: "true"}}},
			"devel-b8c4e8a9d4e2-dirty"},
		{"nothing recorded", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "(devel)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := versionOf(&tc.bi); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
