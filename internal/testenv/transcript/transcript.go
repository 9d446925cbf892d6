// Package transcript runs lvsha's transcript tests, in the layout of etcd
// raft's interaction tests: a file in testdata/ is a sequence of blocks
//
//	command args
//	input lines (optional)
//	----
//	output lines
//
// each ended by a blank line; lines starting with # and blank lines between
// blocks are comments. The test runs each command and compares what it
// renders with the output the file has, exactly; `go test -run Transcript
// -update` rewrites the outputs instead, and the diff is then the review.
package transcript

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the outputs of the transcripts in testdata/")

// Block is one command of a transcript with its expected output.
type Block struct {
	Pre    []string // comments and blank lines before the command
	Line   int      // of the command in its file, from 1
	Cmd    string
	Input  []string
	Output []string
}

// Args is the command's words after the first.
func (b Block) Args() []string { return strings.Fields(b.Cmd)[1:] }

// Name is the command's first word.
func (b Block) Name() string {
	if f := strings.Fields(b.Cmd); len(f) > 0 {
		return f[0]
	}
	return ""
}

// Parse splits a transcript into its blocks.
func Parse(text string) ([]Block, error) {
	var blocks []Block
	var cur Block
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if l == "" || strings.HasPrefix(l, "#") {
			cur.Pre = append(cur.Pre, l)
			continue
		}
		cur.Cmd, cur.Line = l, i+1
		for i++; i < len(lines) && lines[i] != "----"; i++ {
			cur.Input = append(cur.Input, lines[i])
		}
		if i == len(lines) {
			return nil, fmt.Errorf("line %d: command %q has no ----", cur.Line, cur.Cmd)
		}
		for i++; i < len(lines) && lines[i] != ""; i++ {
			cur.Output = append(cur.Output, lines[i])
		}
		blocks = append(blocks, cur)
		cur = Block{}
	}
	return blocks, nil
}

// Run runs every file matching glob as a subtest of its own. start begins a
// fresh run for one file and returns the function that runs each of its
// blocks in order and returns the output lines.
func Run(t *testing.T, glob string, start func(t *testing.T) func(Block) []string) {
	files, err := filepath.Glob(glob)
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts match %s: %v", glob, err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), filepath.Ext(file)), func(t *testing.T) {
			runFile(t, file, start(t))
		})
	}
}

func runFile(t *testing.T, file string, run func(Block) []string) {
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := Parse(string(text))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var out strings.Builder
	failed := false
	for _, b := range blocks {
		got := run(b)
		for _, l := range b.Pre {
			out.WriteString(l + "\n")
		}
		out.WriteString(b.Cmd + "\n")
		for _, l := range b.Input {
			out.WriteString(l + "\n")
		}
		out.WriteString("----\n")
		for _, l := range got {
			out.WriteString(l + "\n")
		}
		out.WriteString("\n")
		if !*update && strings.Join(got, "\n") != strings.Join(b.Output, "\n") {
			failed = true
			t.Errorf("%s:%d: %s\n%s", file, b.Line, b.Cmd, diff(b.Output, got))
		}
	}
	if *update {
		if err := os.WriteFile(file, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	} else if failed {
		t.Log("if the new output is right, rewrite it: go test -run Transcript -update")
	}
}

// diff shows the expected and the rendered output from their first
// difference on.
func diff(want, got []string) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "first difference at output line %d\n--- want\n", i+1)
	for _, l := range want[i:min(i+8, len(want))] {
		b.WriteString("  " + l + "\n")
	}
	b.WriteString("+++ got\n")
	for _, l := range got[i:min(i+8, len(got))] {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}
