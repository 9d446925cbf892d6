package main

import (
	"fmt"
	"io"
)

func runRealserver(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "lvsha: realserver: not wired yet")
	return exitFail
}
