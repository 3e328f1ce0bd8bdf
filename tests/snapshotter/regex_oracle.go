// Reads "<pattern>\t<name>" lines and prints whether Go's regexp (what containerd's filters use for ~=) matches
// name: 1, 0, or E when the pattern does not compile. The oracle of test_filter_regex.py.
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		parts := strings.SplitN(in.Text(), "\t", 2)
		re, err := regexp.Compile(parts[0])
		if err != nil {
			fmt.Println("E")
			continue
		}
		if re.MatchString(parts[1]) {
			fmt.Println("1")
		} else {
			fmt.Println("0")
		}
	}
}
