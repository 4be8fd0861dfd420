// The benchmark's baseline is upstream mochi v2.7.9 as released, not Ferry's
// fork in third_party/mochi, so it is a module of its own with no replace.
module github.com/ferrymq/ferry/bench/mochi-baseline

go 1.26.0

require github.com/mochi-mqtt/server/v2 v2.7.9

require (
	github.com/gorilla/websocket v1.5.0 // indirect
	github.com/rs/xid v1.4.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
