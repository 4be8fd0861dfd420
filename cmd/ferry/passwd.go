package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ferrymq/ferry/hooks/auth"
	"golang.org/x/term"
)

const passwdUsage = `usage: ferry passwd [-c] FILE USER            set USER's password (prompted, or --stdin)
       ferry passwd [-c] -b FILE USER PASSWORD   set it from the command line
       ferry passwd -D FILE USER                 delete USER
  -c  create FILE anew, dropping the users it had
  -b  batch: the password is the last argument (it is then visible to
      other users of the machine in the process list and shell history)
  --stdin  read the password as the first line of standard input`

// passwd adds, changes or deletes a user in a Mosquitto-compatible password
// file, with mosquitto_passwd's flags (-c, -b, -D), which may come before
// or after the arguments.
//
// Without -b the password is prompted for twice on a terminal, or read as
// the first line of standard input with --stdin or when standard input is
// not a terminal.
func passwd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ferry passwd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fromStdin := fs.Bool("stdin", false, "")
	batch := fs.Bool("b", false, "")
	del := fs.Bool("D", false, "")
	create := fs.Bool("c", false, "")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		fmt.Fprintf(stderr, "ferry passwd: %v\n%s\n", err, passwdUsage)
		return exitUsage
	}
	want := 2
	if *batch {
		want = 3
	}
	switch {
	case len(pos) != want:
		fmt.Fprintf(stderr, "ferry passwd: want %d arguments, got %d\n%s\n", want, len(pos), passwdUsage)
		return exitUsage
	case *del && (*batch || *create || *fromStdin):
		fmt.Fprintf(stderr, "ferry passwd: -D takes no password and cannot be combined with -b, -c or --stdin\n%s\n", passwdUsage)
		return exitUsage
	case *batch && *fromStdin:
		fmt.Fprintf(stderr, "ferry passwd: -b and --stdin both give the password; use one\n%s\n", passwdUsage)
		return exitUsage
	}
	file, user := pos[0], pos[1]
	if user == "" || strings.ContainsAny(user, ":\r\n") {
		fmt.Fprintf(stderr, "ferry passwd: user name %q must not be empty or contain ':' or a line break\n", user)
		return exitUsage
	}
	if *del {
		if err := auth.DeletePassword(file, user); err != nil {
			fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "user %s deleted from %s\n", user, file)
		return 0
	}
	var pw string
	if *batch {
		pw = pos[2]
		if pw == "" {
			fmt.Fprintln(stderr, "ferry passwd: empty password")
			return exitUsage
		}
	} else if pw, err = readPassword(*fromStdin, stdin, stderr); err != nil {
		fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
		return exitUsage
	}
	if *create {
		if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
			return 1
		}
	}
	if err := auth.SetPassword(file, user, pw); err != nil {
		fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "password for %s set in %s\n", user, file)
	return 0
}

func readPassword(fromStdin bool, stdin io.Reader, stderr io.Writer) (string, error) {
	f, isFile := stdin.(*os.File)
	if fromStdin || !isFile || !term.IsTerminal(int(f.Fd())) {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read password: %w", err)
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return "", errors.New("empty password on standard input")
		}
		return pw, nil
	}
	fmt.Fprint(stderr, "Password: ")
	a, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(stderr)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	fmt.Fprint(stderr, "Reenter password: ")
	b, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(stderr)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	if string(a) != string(b) {
		return "", errors.New("passwords do not match")
	}
	if len(a) == 0 {
		return "", errors.New("empty password")
	}
	return string(a), nil
}
