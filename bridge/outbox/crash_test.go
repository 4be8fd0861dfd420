package outbox

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/ferrymq/ferry/bridge"
)

// TestKill9: a child process appends in "always" mode and prints each seq
// once Append returned; the parent kills it with SIGKILL mid-stream,
// reopens the directory and finds every acknowledged message.
func TestKill9(t *testing.T) {
	if dir := os.Getenv("FERRY_OUTBOX_CRASH_CHILD"); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$")
	cmd.Env = append(os.Environ(), "FERRY_OUTBOX_CRASH_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[uint64]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(acked) < 300 {
		if seq, err := strconv.ParseUint(sc.Text(), 10, 64); err == nil {
			acked[seq] = true
		}
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no deferred close runs
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(acked) < 300 {
		t.Fatalf("child acknowledged only %d appends", len(acked))
	}
	o := openTest(t, dir, SyncAlways)
	got, err := o.Read("r", 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	have := map[uint64]bool{}
	for _, m := range got {
		have[m.Seq] = true
		if string(m.Payload) != fmt.Sprint("p", m.Seq) {
			t.Fatalf("seq %d payload %q", m.Seq, m.Payload)
		}
	}
	for seq := range acked {
		if !have[seq] {
			t.Fatalf("acknowledged seq %d lost after kill -9 (%d acked, %d on disk)", seq, len(acked), len(got))
		}
	}
	// Seqs continue above what was on disk.
	ms := []bridge.Message{{Route: "r", Topic: "t"}}
	if err := o.Append(context.Background(), ms); err != nil || have[ms[0].Seq] {
		t.Fatalf("seq after crash = %d, %v", ms[0].Seq, err)
	}
}

func crashChild(dir string) {
	o, err := Open(Config{Dir: dir, Sync: SyncAlways}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := uint64(1); ; i++ {
		// Seqs are assigned in append order, so seq i carries payload "p<i>".
		ms := []bridge.Message{{Route: "r", Topic: "t", Payload: []byte(fmt.Sprint("p", i))}}
		if err := o.Append(context.Background(), ms); err != nil {
			os.Exit(3)
		}
		fmt.Fprintln(w, ms[0].Seq)
		_ = w.Flush()
	}
}
