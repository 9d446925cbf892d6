package transcript

import (
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	blocks, err := Parse("# c\n\nadd 1 2\nin\n----\nout1\nout2\n\nnothing\n----\n\n# end\nlast\n----\nx\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 3 {
		t.Fatalf("%d blocks: %+v", len(blocks), blocks)
	}
	b := blocks[0]
	if b.Name() != "add" || !slices.Equal(b.Args(), []string{"1", "2"}) || b.Line != 3 ||
		!slices.Equal(b.Pre, []string{"# c", ""}) || !slices.Equal(b.Input, []string{"in"}) ||
		!slices.Equal(b.Output, []string{"out1", "out2"}) {
		t.Errorf("first block: %+v", b)
	}
	if b := blocks[1]; b.Cmd != "nothing" || len(b.Output) != 0 || len(b.Pre) != 0 {
		t.Errorf("empty output: %+v", b)
	}
	if b := blocks[2]; !slices.Equal(b.Pre, []string{"# end"}) || !slices.Equal(b.Output, []string{"x"}) {
		t.Errorf("last block: %+v", b)
	}
	if _, err := Parse("cmd\nno separator\n"); err == nil {
		t.Error("a command without ---- was accepted")
	}
}

func TestDiff(t *testing.T) {
	got := diff([]string{"a", "b", "c"}, []string{"a", "B"})
	want := "first difference at output line 2\n--- want\n  b\n  c\n+++ got\n  B\n"
	if got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
}
