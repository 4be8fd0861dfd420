package broker

import "runtime/debug"

// version, when set at link time (go build -ldflags "-X
// github.com/ferrymq/ferry/broker.version=v1.2.3"), is the version Ferry
// reports. Never assigned at run time.
var version = ""

// Version is Ferry's version, as `ferry version`, the "ferry started" log
// line and $SYS/broker/version report it: the link-time version if one was
// set, else what the Go toolchain recorded in the binary: the module
// version (go install github.com/ferrymq/ferry/cmd/ferry@v1.2.3) or, for a
// build from a git checkout (make build, go build), a pseudo-version naming
// the commit, or the commit itself; "(devel)" when the build recorded
// neither (go run, or -buildvcs=false).
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(devel)"
	}
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "(devel)"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		return "devel-" + rev + "-dirty"
	}
	return "devel-" + rev
}
