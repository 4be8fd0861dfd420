package broker

import (
	"strconv"

	"github.com/ferrymq/ferry/cluster"
	"github.com/prometheus/client_golang/prometheus"
)

// clusterCollector exports the cluster node's membership and counters.
type clusterCollector struct{ n *cluster.Node }

var (
	descClusterNodes     = prometheus.NewDesc("ferry_cluster_nodes", "Nodes whose heartbeat is current, this one included.", nil, nil)
	descClusterNodeConns = prometheus.NewDesc("ferry_cluster_node_connections", "MQTT connections per node, from its last heartbeat.", []string{"node"}, nil)
	descClusterForwarded = prometheus.NewDesc("ferry_cluster_forwarded_total", "Messages sent to other nodes, one per node.", nil, nil)
	descClusterReceived  = prometheus.NewDesc("ferry_cluster_received_total", "Messages received from other nodes.", nil, nil)
	descClusterFailed    = prometheus.NewDesc("ferry_cluster_forward_failures_total", "Messages or retained messages that could not be written to NATS (a QoS 1/2 publisher is not acknowledged and sends again).", nil, nil)
	descClusterMalformed = prometheus.NewDesc("ferry_cluster_malformed_total", "Frames from NATS that did not decode, dropped.", nil, nil)
	descClusterRetained  = prometheus.NewDesc("ferry_cluster_retained_synced_total", "Retained messages set or cleared from the cluster's bucket.", nil, nil)
	descClusterReady     = prometheus.NewDesc("ferry_cluster_ready", "1 when the node reaches NATS and JetStream stores its heartbeats.", []string{"node"}, nil)
)

func (clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClusterNodes, descClusterNodeConns, descClusterForwarded, descClusterReceived,
		descClusterFailed, descClusterMalformed, descClusterRetained, descClusterReady} {
		ch <- d
	}
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	members := c.n.Members()
	ch <- prometheus.MustNewConstMetric(descClusterNodes, prometheus.GaugeValue, float64(len(members)))
	for _, m := range members {
		ch <- prometheus.MustNewConstMetric(descClusterNodeConns, prometheus.GaugeValue, float64(m.Connections), m.ID)
	}
	s := c.n.Stats()
	ch <- prometheus.MustNewConstMetric(descClusterForwarded, prometheus.CounterValue, float64(s.Forwarded))
	ch <- prometheus.MustNewConstMetric(descClusterReceived, prometheus.CounterValue, float64(s.Received))
	ch <- prometheus.MustNewConstMetric(descClusterFailed, prometheus.CounterValue, float64(s.ForwardFailed))
	ch <- prometheus.MustNewConstMetric(descClusterMalformed, prometheus.CounterValue, float64(s.Malformed))
	ch <- prometheus.MustNewConstMetric(descClusterRetained, prometheus.CounterValue, float64(s.RetainedSynced))
	ready := 1.0
	if c.n.Ready() != nil {
		ready = 0
	}
	ch <- prometheus.MustNewConstMetric(descClusterReady, prometheus.GaugeValue, ready, c.n.ID())
}

// clusterSysPrefix is where the cluster's membership appears as retained
// MQTT messages.
const clusterSysPrefix = "$SYS/ferry/cluster/"

// clusterSys publishes the membership under $SYS each mqtt.sys_interval:
// nodes (how many), node (this one's id), and nodes/<id>/connections.
func (b *Broker) clusterSys() {
	members := b.cluster.Members()
	_ = b.mochi.Publish(clusterSysPrefix+"nodes", []byte(strconv.Itoa(len(members))), true, 0)
	_ = b.mochi.Publish(clusterSysPrefix+"node", []byte(b.cluster.ID()), true, 0)
	for _, m := range members {
		_ = b.mochi.Publish(clusterSysPrefix+"nodes/"+m.ID+"/connections", []byte(strconv.FormatInt(m.Connections, 10)), true, 0)
	}
}
