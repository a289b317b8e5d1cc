package nodeinstall

import (
	"fmt"
	"io"
	"strings"
)

// Apply carries the plan out on the host. Files are written to a temporary
// name in their directory and renamed into place, so containerd (or a
// running shim) never sees half a file; a file we replace keeps its mode.
//
// Every path is resolved inside the host root (see hostFS); a file that
// is a symbolic link was planned as the link's target, and Apply never
// replaces or removes a link.
func (p *Plan) Apply() error {
	h := p.opts.hostFS()
	for _, c := range p.Changes {
		var err error
		switch c.Kind {
		case Create, Update:
			err = h.writeFile(c.Path, c.Data, c.Mode)
		case Remove:
			err = h.remove(c.Path)
		case RemoveDir:
			err = h.removeDir(c.Path)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", c.Kind, c.Path, err)
		}
	}
	return nil
}

// Describe writes the plan for people: each change, and for text files
// the lines added and removed.
func (p *Plan) Describe(w io.Writer) {
	if p.Detection != nil {
		fmt.Fprintf(w, "node: %s\n", p.Detection)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if len(p.Changes) == 0 {
		fmt.Fprintln(w, "nothing to change")
		return
	}
	for _, c := range p.Changes {
		fmt.Fprintf(w, "%s %s", c.Kind, c.Path)
		if c.Why != "" {
			fmt.Fprintf(w, " (%s)", c.Why)
		}
		if c.Via != "" {
			fmt.Fprintf(w, " for %s", c.Via)
		}
		fmt.Fprintln(w)
		if c.Binary || c.Kind == RemoveDir || strings.HasSuffix(c.Path, backupSuffix) {
			continue
		}
		switch c.Kind {
		case Create:
			for _, l := range lines(c.Data) {
				fmt.Fprintf(w, "    + %s\n", l)
			}
		case Update:
			for _, l := range diffLines(lines(c.Old), lines(c.Data)) {
				fmt.Fprintf(w, "    %s\n", l)
			}
		}
	}
}

func lines(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// diffLines returns the changed lines ("- old", "+ new") of a line diff
// (longest common subsequence; config files are small).
func diffLines(a, b []string) []string {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, "- "+a[i])
			i++
		default:
			out = append(out, "+ "+b[j])
			j++
		}
	}
	return out
}
