// Package deploy holds no code: it is the home of Ferry's packaging and
// monitoring files, and of the tests that keep them true to the binary.
//
//	systemd/ferry.service      hardened unit (systemd-analyze verify)
//	systemd/ferry.sysusers     the ferry system user, for systemd-sysusers
//	grafana/ferry.json         Grafana dashboard over Ferry's metric names
//	prometheus/alerts.yml      alert rules (promtool check rules)
//	prometheus/alerts_test.yml their unit tests (promtool test rules)
//
// The Dockerfile is at the repository root (the build context). The tests
// build ferry the way the Dockerfile does (static, CGO off), run it, and
// check that every metric the dashboard and the alerts query exists in its
// /metrics. See docs/operations.md.
package deploy
