package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/ferrymq/ferry/persistence"
)

// Exit code of `ferry store verify` when the store is damaged.
const exitDamaged = 1

// store inspects or rescues a data dir without a broker (which must not be
// running on it):
//
//	ferry store verify DIR        report damage; exit 1 if there is any
//	ferry store salvage DIR OUT   copy what is readable into the new dir OUT
//
// Both only read DIR.
func store(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 2 && args[0] == "verify":
		return storeVerify(args[1], stdout, stderr)
	case len(args) == 3 && args[0] == "salvage":
		return storeSalvage(args[1], args[2], stdout, stderr)
	}
	fmt.Fprintln(stderr, "usage: ferry store verify DIR | ferry store salvage DIR OUT")
	return exitUsage
}

func storeVerify(dir string, stdout, stderr io.Writer) int {
	rep, err := persistence.Inspect(dir)
	if err != nil {
		fmt.Fprintf(stderr, "ferry store verify: %v\n", err)
		return exitDamaged
	}
	if rep.Empty {
		fmt.Fprintf(stdout, "%s: no store (empty or missing): Ferry creates a new one there\n", dir)
		return 0
	}
	fmt.Fprintf(stdout, "%s: %d tables (%d entries), %d log files, newest commit %d (recorded on disk: %d)\n",
		dir, rep.Tables, rep.Keys, rep.Logs, rep.Commit, rep.Recorded)
	for _, n := range rep.Notes {
		fmt.Fprintf(stdout, "  note: %s\n", n)
	}
	if len(rep.Damage) == 0 {
		fmt.Fprintln(stdout, "no damage found")
		return 0
	}
	for _, d := range rep.Damage {
		fmt.Fprintf(stdout, "  DAMAGED: %s\n", d)
	}
	fmt.Fprintf(stdout, "%d problems: Ferry refuses to start on this dir. Restore it from a backup, or run\n  ferry store salvage %s NEWDIR\nand set storage.dir to NEWDIR.\n", len(rep.Damage), dir)
	return exitDamaged
}

func storeSalvage(dir, out string, stdout, stderr io.Writer) int {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rep, err := persistence.Salvage(dir, out, logger)
	if err != nil {
		fmt.Fprintf(stderr, "ferry store salvage: %v\n", err)
		return exitDamaged
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(stdout, "  skipped: %s\n", s)
	}
	fmt.Fprintf(stdout, "copied %d entries (%d unreadable values lost) from %s into %s, which holds %d keys; %s is unchanged\n",
		rep.Entries, rep.Lost, dir, out, rep.Keys, dir)
	return 0
}
