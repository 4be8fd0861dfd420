package auth

import (
	"os"
	"strings"
	"testing"
)

func FuzzParsePasswordFile(f *testing.F) {
	if b, err := os.ReadFile("testdata/mosquitto.passwd"); err == nil {
		f.Add(string(b))
	}
	f.Add("# c\n\nbob:$6$AAAA$" + strings.Repeat("A", 86) + "==\n")
	f.Add("alice:$2y$04$abcdefghijklmnopqrstuu5n3Yz2cGZHqZCIwJ.9gZz6MJJuNoIvK\n")
	f.Add("x:$7$1$$\n")
	f.Add("plain:text\n")
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParsePasswordFile(strings.NewReader(in), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		// Any parsed file must be usable; a wrong password never verifies
		// against a $6$/$7$ digest of a different input.
		for u := range p.users {
			if p.users[u].kind != hashBcrypt && p.users[u].iterations <= 1000 {
				_ = p.Check(u, "\x00not-the-password")
			}
		}
	})
}

func FuzzParseACLFile(f *testing.F) {
	f.Add(e2eACL)
	f.Add("topic read public/#\nuser bob smith\ntopic deny a/+\npattern write d/%u/%c/%{claim:t}\n")
	f.Add("pattern read %{claim:\n")
	f.Add("topic read a/#/b\n")
	f.Fuzz(func(t *testing.T, in string) {
		set, err := parseACLFile(strings.NewReader(in), "fuzz")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		id := &identity{username: "u#/", clientID: "c+"}
		ca := set.resolve(id)
		for _, g := range append(ca.allow, ca.deny...) {
			if !validFilter(g.filter) {
				t.Fatalf("resolved filter %q is not valid", g.filter)
			}
			if strings.Contains(g.filter, "u#/") || strings.Contains(g.filter, "c+") {
				t.Fatalf("unsafe name substituted into %q", g.filter)
			}
		}
	})
}

// refMatch is a direct transcription of MQTT §4.7 used as an oracle.
func refMatch(filter, topic string) bool {
	if filter == "" || topic == "" || strings.ContainsAny(topic, "+#") || !validFilter(filter) {
		return false
	}
	if strings.HasPrefix(topic, "$") && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) {
			return false
		}
		if f != "+" && f != tl[i] {
			return false
		}
	}
	return len(fl) == len(tl)
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"a/+", "a/b"}, {"a/#", "a"}, {"#", "$SYS/x"}, {"a/+/c", "a//c"},
		{"sport/tennis/#", "sport/tennis"}, {"+/+", "/"}, {"$SYS/#", "$SYS"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		got, want := Match(filter, topic), refMatch(filter, topic)
		if got != want {
			t.Fatalf("Match(%q, %q) = %v, reference says %v", filter, topic, got, want)
		}
		// A subscription equal to a topic is covered exactly when it matches.
		if !strings.ContainsAny(topic, "+#") && MatchFilter(filter, topic) != got {
			t.Fatalf("MatchFilter(%q, %q) = %v, Match = %v", filter, topic, !got, got)
		}
		// Whatever a filter matches, it overlaps with.
		if got && !overlaps(filter, topic) {
			t.Fatalf("overlaps(%q, %q) = false but Match is true", filter, topic)
		}
	})
}
