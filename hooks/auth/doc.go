// Package auth is Ferry's authentication and authorization: one mochi hook
// (Hook) that checks CONNECT credentials and every publish, subscribe and
// delivery against an ACL.
//
// Credentials come from a Mosquitto-compatible password file ("$7$", "$6$"
// and bcrypt hashes), a JWT in the password field, an HTTP callout, or a
// verified TLS client certificate. The ACL is a Mosquitto-compatible
// acl_file and/or YAML rules; once any ACL is configured, anything it does
// not allow is denied, and deny rules win over allow rules.
//
// Topic matching follows the MQTT specification exactly (see Match and
// MatchFilter): "a/+" does not match "a/b/c", "a/#" matches "a", and
// wildcards at the first level do not match "$" topics.
//
// Files are read by New and by Reload only; Reload swaps the parsed rules
// atomically and keeps the old ones if a file is bad. A client's identity is
// kept from CONNECT until its session ends, so per-message ACL checks do no
// I/O and, after the first check, no allocation, and an offline persistent
// session's messages are checked against its owner's rules.
//
// A session belongs to the identity that created it: another identity
// connecting under its client id is refused unless AllowSessionTakeover is
// set (session.go).
package auth
