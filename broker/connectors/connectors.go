// Package connectors is the table of Ferry's bridge connectors: the one
// place that knows them all (the bridge package knows none, and no
// connector knows another).
package connectors

import (
	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/activemq"
	"github.com/ferrymq/ferry/bridge/kafka"
	"github.com/ferrymq/ferry/bridge/mqtt"
	"github.com/ferrymq/ferry/bridge/nats"
	"github.com/ferrymq/ferry/bridge/rabbitmq"
	"github.com/ferrymq/ferry/bridge/redis"
	"github.com/ferrymq/ferry/bridge/webhook"
)

// Factories returns the connectors by their configuration key.
func Factories() map[string]bridge.Factory {
	return map[string]bridge.Factory{
		"kafka":    kafka.New,
		"nats":     nats.New,
		"webhook":  webhook.New,
		"mqtt":     mqtt.New,
		"redis":    redis.New,
		"rabbitmq": rabbitmq.New,
		"activemq": activemq.New,
	}
}
