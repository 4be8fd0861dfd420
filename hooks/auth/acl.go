package auth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// access is a set of rights a rule grants or denies.
type access uint8

const (
	accessRead  access = 1 << iota // subscribe and receive
	accessWrite                    // publish
)

// whoKind says which clients a rule applies to.
type whoKind uint8

const (
	whoAll       whoKind = iota // Mosquitto "pattern" lines, YAML rules without selectors
	whoAnonymous                // Mosquitto "topic" lines before the first "user" line
	whoUser                     // Mosquitto "topic" lines after "user NAME"
	whoSelect                   // YAML rules with users/clients/cns
)

type aclRule struct {
	who       whoKind
	anonymous bool     // whoSelect: only clients without a user name
	users     []string // whoUser: one name; whoSelect: any of these
	clients   []string
	cns       []string
	filter    string // may contain %u, %c, %{claim:NAME}
	subst     bool   // filter contains placeholders
	access    access
	deny      bool
	src       string // file:line or acl[i], for messages
}

// aclSet is an immutable, parsed set of ACL rules from the ACL file and the
// YAML rules. Once an aclSet exists, anything it does not allow is denied.
type aclSet struct {
	rules []aclRule
}

// ACLRule is one rule of the YAML ACL form. It applies to the clients that
// match every selector given (Users, Clients, CNs, Anonymous); a rule with no
// selector applies to every client. Deny rules win over allow rules whatever
// their order. Filters may use the placeholders %u (user name), %c (client
// id) and %{claim:NAME} (a string claim of the client's JWT).
type ACLRule struct {
	Users     []string  `yaml:"users"`
	Clients   []string  `yaml:"clients"`
	CNs       []string  `yaml:"cns"`
	Anonymous bool      `yaml:"anonymous"` // only clients that did not authenticate
	Allow     ACLAccess `yaml:"allow"`
	Deny      ACLAccess `yaml:"deny"`
}

// ACLAccess lists topic filters per right. Subscribe covers both subscribing
// and receiving messages; Publish covers publishing.
type ACLAccess struct {
	Publish   []string `yaml:"publish"`
	Subscribe []string `yaml:"subscribe"`
}

// parseACLFile parses a Mosquitto-compatible ACL file read from r; name is
// used in error messages. Supported lines:
//
//	# comment
//	user NAME
//	topic [read|write|readwrite|deny] FILTER
//	pattern [read|write|readwrite|deny] FILTER
//
// As in Mosquitto 2, topic lines before the first user line apply to
// anonymous clients only, topic lines after "user NAME" to that user, and
// pattern lines to every client.
func parseACLFile(r io.Reader, name string) (*aclSet, error) {
	set := &aclSet{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLineLen)
	n := 0
	user := ""
	for sc.Scan() {
		n++
		src := fmt.Sprintf("%s:%d", name, n)
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		keyword, rest := cutSpace(line)
		switch keyword {
		case "user":
			if rest == "" {
				return nil, fmt.Errorf("%s: user without a name", src)
			}
			user = rest
		case "topic", "pattern":
			acc, deny, filter, err := parseAccessFilter(rest)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", src, keyword, err)
			}
			rule := aclRule{filter: filter, access: acc, deny: deny, src: src}
			switch {
			case keyword == "pattern":
				rule.who = whoAll
			case user == "":
				rule.who = whoAnonymous
			default:
				rule.who, rule.users = whoUser, []string{user}
			}
			if err := rule.setFilter(keyword == "pattern"); err != nil {
				return nil, fmt.Errorf("%s: %w", src, err)
			}
			set.rules = append(set.rules, rule)
		default:
			return nil, fmt.Errorf("%s: unknown keyword %q: want user, topic or pattern", src, keyword)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", name, n+1, err)
	}
	return set, nil
}

// parseAccessFilter parses "[read|write|readwrite|deny] FILTER". Like
// Mosquitto, a single word is the filter with readwrite access, and the
// filter is the rest of the line (it may contain spaces).
func parseAccessFilter(s string) (acc access, deny bool, filter string, err error) {
	if s == "" {
		return 0, false, "", errors.New("missing topic filter")
	}
	word, rest := cutSpace(s)
	if rest == "" {
		return accessRead | accessWrite, false, s, nil
	}
	switch word {
	case "read":
		return accessRead, false, rest, nil
	case "write":
		return accessWrite, false, rest, nil
	case "readwrite":
		return accessRead | accessWrite, false, rest, nil
	case "deny":
		return accessRead | accessWrite, true, rest, nil
	}
	return 0, false, "", fmt.Errorf("access %q: want read, write, readwrite or deny", word)
}

// cutSpace splits s at its first run of spaces or tabs and trims the rest.
func cutSpace(s string) (word, rest string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i:])
}

// setFilter validates r.filter. Placeholders are allowed only where
// allowSubst is true (patterns and YAML rules).
func (r *aclRule) setFilter(allowSubst bool) error {
	probe, subst, err := substitute(r.filter, func(string) (string, bool) { return "x", true })
	if err != nil {
		return fmt.Errorf("filter %q: %w", r.filter, err)
	}
	if subst && !allowSubst {
		// Mosquitto takes %u literally in topic lines; refusing it catches the
		// common mistake of writing topic where pattern was meant.
		return fmt.Errorf("filter %q: %%u, %%c and %%{claim:...} work in pattern lines only", r.filter)
	}
	if !validFilter(probe) {
		return fmt.Errorf("filter %q: not a valid MQTT topic filter", r.filter)
	}
	r.subst = subst
	return nil
}

// substitute replaces %u, %c and %{claim:NAME} in f with the values lookup
// returns for "u", "c" and "claim:NAME". ok is false when lookup has no safe
// value for one of them; then the rule must not apply. A "%" not followed by
// one of these stays literal, as in Mosquitto.
func substitute(f string, lookup func(key string) (string, bool)) (out string, subst bool, err error) {
	if !strings.Contains(f, "%") {
		return f, false, nil
	}
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 == len(f) {
			b.WriteByte(f[i])
			continue
		}
		var key string
		switch f[i+1] {
		case 'u', 'c':
			key = f[i+1 : i+2]
			i++
		case '{':
			end := strings.IndexByte(f[i:], '}')
			if end < 0 {
				return "", false, errors.New("unterminated %{")
			}
			key = f[i+2 : i+end]
			name, ok := strings.CutPrefix(key, "claim:")
			if !ok || name == "" {
				return "", false, fmt.Errorf("placeholder %%{%s}: want %%{claim:NAME}", key)
			}
			i += end
		default:
			b.WriteByte(f[i])
			continue
		}
		v, ok := lookup(key)
		if !ok {
			return "", true, errNoValue
		}
		b.WriteString(v)
		subst = true
	}
	return b.String(), subst, nil
}

// errNoValue reports that a placeholder has no safe value for a client.
var errNoValue = errors.New("placeholder has no value")

// compileYAMLRules turns the YAML ACL form into rules.
func compileYAMLRules(rules []ACLRule) ([]aclRule, error) {
	var out []aclRule
	var errs []error
	for i, r := range rules {
		base := aclRule{who: whoAll, anonymous: r.Anonymous, users: r.Users, clients: r.Clients, cns: r.CNs}
		if len(r.Users)+len(r.Clients)+len(r.CNs) > 0 || r.Anonymous {
			base.who = whoSelect
		}
		if r.Anonymous && len(r.Users) > 0 {
			errs = append(errs, fmt.Errorf("acl[%d]: anonymous and users exclude each other", i))
		}
		n := len(out)
		add := func(kind string, filters []string, acc access, deny bool) {
			for j, f := range filters {
				rule := base
				rule.filter, rule.access, rule.deny = f, acc, deny
				rule.src = fmt.Sprintf("acl[%d].%s[%d]", i, kind, j)
				if err := rule.setFilter(true); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", rule.src, err))
					continue
				}
				out = append(out, rule)
			}
		}
		add("allow.publish", r.Allow.Publish, accessWrite, false)
		add("allow.subscribe", r.Allow.Subscribe, accessRead, false)
		add("deny.publish", r.Deny.Publish, accessWrite, true)
		add("deny.subscribe", r.Deny.Subscribe, accessRead, true)
		if len(out) == n && len(errs) == 0 {
			errs = append(errs, fmt.Errorf("acl[%d]: rule has no allow or deny filters", i))
		}
	}
	return out, errors.Join(errs...)
}

// loadACL builds the rule set from the ACL file (if any) and the YAML rules.
// It returns nil when neither is configured: then no ACL applies.
func loadACL(path string, yamlRules []ACLRule) (*aclSet, error) {
	if path == "" && len(yamlRules) == 0 {
		return nil, nil
	}
	set := &aclSet{}
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		fs, err := parseACLFile(f, path)
		if err != nil {
			return nil, err
		}
		set.rules = fs.rules
	}
	yr, err := compileYAMLRules(yamlRules)
	if err != nil {
		return nil, err
	}
	set.rules = append(set.rules, yr...)
	return set, nil
}

// grant is one rule resolved for one client: placeholders substituted.
type grant struct {
	filter string
	access access
}

// clientACL is an aclSet resolved for one client, so the per-message check
// is a loop over plain filters with no allocation.
type clientACL struct {
	set   *aclSet
	deny  []grant
	allow []grant
}

// resolve selects the rules of s that apply to id and substitutes their
// placeholders. A placeholder whose value is empty or contains "+", "#" or
// "/" makes its rule not apply: such a value would widen the filter (a user
// named "#" or "bob/x" must not reach other users' topics).
func (s *aclSet) resolve(id *identity) *clientACL {
	c := &clientACL{set: s}
	lookup := func(key string) (string, bool) {
		var v string
		switch key {
		case "u":
			v = id.username
		case "c":
			v = id.clientID
		default:
			name := strings.TrimPrefix(key, "claim:")
			s, ok := id.claims[name].(string)
			if !ok {
				return "", false
			}
			v = s
		}
		if v == "" || strings.ContainsAny(v, "+#/") {
			return "", false
		}
		return v, true
	}
	for i := range s.rules {
		r := &s.rules[i]
		if !r.appliesTo(id) {
			continue
		}
		f := r.filter
		if r.subst {
			var err error
			if f, _, err = substitute(r.filter, lookup); err != nil {
				continue
			}
		}
		g := grant{filter: f, access: r.access}
		if r.deny {
			c.deny = append(c.deny, g)
		} else {
			c.allow = append(c.allow, g)
		}
	}
	return c
}

func (r *aclRule) appliesTo(id *identity) bool {
	switch r.who {
	case whoAll:
		return true
	case whoAnonymous:
		return id.username == ""
	case whoUser:
		return id.username != "" && id.username == r.users[0]
	}
	if r.anonymous && id.username != "" {
		return false
	}
	if len(r.users) > 0 && (id.username == "" || !slices.Contains(r.users, id.username)) {
		return false
	}
	if len(r.clients) > 0 && !slices.Contains(r.clients, id.clientID) {
		return false
	}
	if len(r.cns) > 0 && (id.cn == "" || !slices.Contains(r.cns, id.cn)) {
		return false
	}
	return true
}

// allowTopic reports whether the client may publish (want accessWrite) or
// receive (accessRead) a message on topic. Deny rules are checked first.
func (c *clientACL) allowTopic(topic string, want access) bool {
	for _, g := range c.deny {
		if g.access&want != 0 && Match(g.filter, topic) {
			return false
		}
	}
	for _, g := range c.allow {
		if g.access&want != 0 && Match(g.filter, topic) {
			return true
		}
	}
	return false
}

// allowSubscribe reports whether the client may subscribe to the wildcard
// filter sub. It is granted when some read rule shares at least one topic
// with sub and no deny rule covers all of sub. Topics under sub that the
// client may not read are filtered out at delivery, where mochi checks each
// message again (so "a/#" under an ACL "a/+" receives "a/b" but not "a/b/c").
func (c *clientACL) allowSubscribe(sub string) bool {
	for _, g := range c.deny {
		if g.access&accessRead != 0 && MatchFilter(g.filter, sub) {
			return false
		}
	}
	for _, g := range c.allow {
		if g.access&accessRead != 0 && overlaps(g.filter, sub) {
			return true
		}
	}
	return false
}
