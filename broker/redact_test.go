package broker

import "testing"

// TestRedactURLList: every password of a comma-separated URL list
// (cluster.nats.url) is redacted, not only the first.
func TestRedactURLList(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nats://a:pw1@h1:4222,nats://b:pw2@h2:4222", "nats://a:REDACTED@h1:4222,nats://b:REDACTED@h2:4222"},
		{"nats://h1:4222,nats://u:pw@h2:4222", "nats://h1:4222,nats://u:REDACTED@h2:4222"},
		{"plain, text", "plain, text"},
		{"http://u:p@h/x", "http://u:REDACTED@h/x"},
	} {
		if got := redact("url", tc.in); got != tc.want {
			t.Errorf("redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
