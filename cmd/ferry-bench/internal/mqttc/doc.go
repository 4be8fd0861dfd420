// Package mqttc is a minimal MQTT 3.1.1 and 5 client codec for ferry-bench.
//
// It encodes packets by appending to caller-owned byte slices and decodes
// them without copying: a decoded Packet's byte slices alias the buffer it was
// decoded from and are valid only until that buffer is reused. This keeps the
// load generator's hot path allocation-free so that it measures the broker,
// not itself.
//
// Only what a load generator needs is implemented: CONNECT/CONNACK,
// PUBLISH, PUBACK/PUBREC/PUBREL/PUBCOMP, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP
// and DISCONNECT, with the MQTT 5 properties used by request/response.
// Conn is not safe for concurrent reads; writes are serialised internally.
package mqttc
