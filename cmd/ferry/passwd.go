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

// passwd adds or changes a user in a Mosquitto-compatible password file:
//
//	ferry passwd [--stdin] FILE USER
//
// The password is prompted for twice on a terminal, or read as the first
// line of standard input with --stdin.
func passwd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ferry passwd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fromStdin := fs.Bool("stdin", false, "")
	if err := fs.Parse(args); err != nil || fs.NArg() != 2 {
		fmt.Fprintln(stderr, "usage: ferry passwd [--stdin] FILE USER")
		return exitUsage
	}
	file, user := fs.Arg(0), fs.Arg(1)
	if user == "" || strings.ContainsAny(user, ":\r\n") {
		fmt.Fprintf(stderr, "ferry passwd: user name %q must not be empty or contain ':' or a line break\n", user)
		return exitUsage
	}
	pw, err := readPassword(*fromStdin, stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "ferry passwd: %v\n", err)
		return exitUsage
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
