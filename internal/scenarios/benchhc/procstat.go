package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func vmRSS() int64 { return procRSS(os.Getpid()) }

// procRSS returns the VmRSS of process pid.
func procRSS(pid int) int64 { return procField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") }

// procPSS is pid's proportional set size: each page it shares with other
// processes (the binary's text, a forked parent's copy-on-write pages)
// counts in part, so a process tree's PSS adds up to the memory it uses.
func procPSS(pid int) int64 { return procField(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:") }

// procField reads a "Name:   123 kB" line of a /proc file, in bytes.
func procField(file, name string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func maxRSS() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss << 10
}
