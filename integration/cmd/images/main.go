// Command images writes the pause image (the CRI sandbox image, also the
// placeholder image storepkg pods name) as an image tarball, built in Go:
// nothing is pulled. Usage (in integration/): go run ./cmd/images DIR
package main

import (
	"fmt"
	"os"

	"github.com/storepkg/storepkg/integration/testimages"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: images DIR")
		os.Exit(2)
	}
	tar, ref, err := testimages.WritePause(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	fmt.Println(tar, ref)
}
