package main

import "flag"

// parseInterspersed parses fs's flags wherever they stand among the
// arguments (ferry passwd FILE USER -b PASS works as -b FILE USER PASS, as
// with mosquitto_passwd) and returns the other arguments in order. "--"
// ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if i := len(args) - len(rest) - 1; i >= 0 && args[i] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
