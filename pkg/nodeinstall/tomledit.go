package nodeinstall

import (
	"bytes"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Edits to files we do not own are textual and marked, so that everything
// else in the file (comments, order, quoting) stays as the operator wrote
// it and uninstall can take out exactly what install put in.
const (
	blockBegin = "# >>> storepkg: added by `storepkg node install`; `storepkg node uninstall` removes this block"
	blockEnd   = "# <<< storepkg"
	importMark = "# added by storepkg node install"
	// ownedHeader starts every file we create whole.
	ownedHeader = "# Written by `storepkg node install`; `storepkg node uninstall` removes this file."
	// k3sBase is how a k3s/rke2 template includes k3s's own template.
	k3sBase = `{{ template "base" . }}`
)

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// tomlStrings renders a TOML array of strings.
func tomlStrings(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// findBlock locates our marked block: [start, end) covers the marker lines.
func findBlock(text []byte) (start, end int, found bool, err error) {
	start, end = -1, -1
	off := 0
	for off < len(text) {
		nl := bytes.IndexByte(text[off:], '\n')
		lineEnd := len(text)
		next := len(text)
		if nl >= 0 {
			lineEnd = off + nl
			next = lineEnd + 1
		}
		line := strings.TrimRight(string(text[off:lineEnd]), "\r \t")
		switch {
		case line == blockBegin && start < 0:
			start = off
		case line == blockEnd && start >= 0:
			return start, next, true, nil
		}
		off = next
	}
	if start >= 0 {
		return 0, 0, false, fmt.Errorf("storepkg block begins but does not end (a line %q is missing)", blockEnd)
	}
	return 0, 0, false, nil
}

// stripBlock removes our block and the blank line install put before it.
func stripBlock(text []byte) ([]byte, bool, error) {
	start, end, found, err := findBlock(text)
	if err != nil || !found {
		return text, false, err
	}
	if start >= 2 && text[start-1] == '\n' && text[start-2] == '\n' {
		start--
	}
	out := append(append([]byte{}, text[:start]...), text[end:]...)
	return out, true, nil
}

// appendBlock appends body between our markers, after a blank line.
func appendBlock(text []byte, body string) []byte {
	var b bytes.Buffer
	b.Write(text)
	if len(text) > 0 {
		if !bytes.HasSuffix(text, []byte("\n")) {
			b.WriteByte('\n')
		}
		b.WriteByte('\n')
	}
	b.WriteString(blockBegin + "\n")
	b.WriteString(body)
	if !strings.HasSuffix(body, "\n") {
		b.WriteByte('\n')
	}
	b.WriteString(blockEnd + "\n")
	return b.Bytes()
}

// layout is what we need to know about where things are in a TOML file.
type layout struct {
	firstTable   int // start of the first [table] line; -1 if none
	versionEnd   int // just after the top-level version line; -1 if none
	importsStart int // the top-level imports key-value; -1 if none
	importsEnd   int
}

func scanLayout(text []byte) (layout, error) {
	l := layout{firstTable: -1, versionEnd: -1, importsStart: -1, importsEnd: -1}
	var p unstable.Parser
	p.Reset(text)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			if l.firstTable < 0 {
				it := e.Key()
				if it.Next() {
					l.firstTable = lineStart(text, int(it.Node().Raw.Offset))
				}
			}
		case unstable.KeyValue:
			if l.firstTable >= 0 {
				continue
			}
			it := e.Key()
			if !it.Next() || !it.IsLast() {
				continue
			}
			switch string(it.Node().Data) {
			case "version":
				l.versionEnd = lineEnd(text, int(e.Raw.Offset+e.Raw.Length))
			case "imports":
				l.importsStart, l.importsEnd = int(e.Raw.Offset), int(e.Raw.Offset+e.Raw.Length)
			}
		}
	}
	if err := p.Error(); err != nil {
		return l, err
	}
	return l, nil
}

func lineStart(text []byte, off int) int {
	return bytes.LastIndexByte(text[:off], '\n') + 1
}

// lineEnd returns the offset just after the newline ending the line at off.
func lineEnd(text []byte, off int) int {
	nl := bytes.IndexByte(text[off:], '\n')
	if nl < 0 {
		return len(text)
	}
	return off + nl + 1
}

// importsOf decodes a document's top-level imports (nil when invalid).
func importsOf(text []byte) ([]string, error) {
	cf, err := parseConfig("", text)
	if err != nil {
		return nil, err
	}
	return cf.Imports, nil
}

// importLine is the line addImport writes when the file has no imports.
func importLine(path string) string {
	return "imports = [" + tomlString(path) + "] " + importMark + "\n"
}

// addImport adds path to the file's top-level imports, inserting the key
// when there is none (after `version`, else before the first table).
func addImport(text []byte, path string) ([]byte, error) {
	l, err := scanLayout(text)
	if err != nil {
		return nil, err
	}
	old, err := importsOf(text)
	if err != nil {
		return nil, err
	}
	want := append(slices.Clone(old), path)
	if l.importsStart < 0 {
		at := l.versionEnd
		if at < 0 {
			at = l.firstTable
		}
		prefix := text
		if at >= 0 {
			prefix = text[:at]
		}
		var b bytes.Buffer
		b.Write(prefix)
		if len(prefix) > 0 && !bytes.HasSuffix(prefix, []byte("\n")) {
			b.WriteByte('\n')
		}
		b.WriteString(importLine(path))
		if at >= 0 {
			b.Write(text[at:])
		}
		return checkImports(b.Bytes(), want)
	}
	closing := l.importsEnd - 1
	if closing < 0 || text[closing] != ']' {
		return nil, fmt.Errorf("imports is not a plain array")
	}
	q := tomlString(path)
	var lastErr error
	for _, ins := range []string{", " + q, q} {
		out := slices.Concat(text[:closing], []byte(ins), text[closing:])
		if out, err := checkImports(out, want); err == nil {
			return out, nil
		} else {
			lastErr = err
		}
	}
	return nil, fmt.Errorf("cannot add %s to imports: %w", path, lastErr)
}

// removeImport takes path out of the file's top-level imports, undoing
// addImport. found is false when the path is not imported.
func removeImport(text []byte, path string) (out []byte, found bool, err error) {
	old, err := importsOf(text)
	if err != nil {
		return nil, false, err
	}
	if !slices.Contains(old, path) {
		return text, false, nil
	}
	want := slices.DeleteFunc(slices.Clone(old), func(s string) bool { return s == path })
	l, err := scanLayout(text)
	if err != nil {
		return nil, false, err
	}
	if l.importsStart < 0 {
		return nil, false, fmt.Errorf("imports %s but cannot find the key", path)
	}
	// The whole line we inserted.
	ls, le := lineStart(text, l.importsStart), lineEnd(text, l.importsStart)
	if strings.TrimRight(string(text[ls:le]), "\r\n") == strings.TrimSuffix(importLine(path), "\n") {
		return slices.Concat(text[:ls], text[le:]), true, nil
	}
	// An element we appended to an existing array.
	region := string(text[l.importsStart:l.importsEnd])
	for _, q := range []string{tomlString(path), "'" + path + "'"} {
		for _, cut := range []string{", " + q, "," + q, q + ", ", q + ",", q} {
			i := strings.Index(region, cut)
			if i < 0 {
				continue
			}
			at := l.importsStart + i
			cand := slices.Concat(text[:at], text[at+len(cut):])
			if got, err := checkImports(cand, want); err == nil {
				return got, true, nil
			}
		}
	}
	return nil, true, fmt.Errorf("cannot take %s out of imports by hand-edit rules; edit the file yourself", path)
}

// checkImports verifies that text is valid TOML whose imports are want.
func checkImports(text []byte, want []string) ([]byte, error) {
	var doc map[string]any
	if err := toml.Unmarshal(text, &doc); err != nil {
		return nil, err
	}
	got, err := importsOf(text)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(got, want) {
		return nil, fmt.Errorf("imports would be %q, want %q", got, want)
	}
	return text, nil
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// tomlKey quotes a key when it is not bare.
func tomlKey(k string) string {
	if bareKey.MatchString(k) {
		return k
	}
	return tomlString(k)
}

// renderTable renders a decoded table under the given header, sub-tables
// as [header.sub] after the table's own keys.
func renderTable(header string, t map[string]any) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]\n", header)
	keys := slices.Sorted(maps.Keys(t))
	for _, k := range keys {
		if _, sub := t[k].(map[string]any); sub {
			continue
		}
		v, err := toml.Marshal(map[string]any{"v": t[k]})
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "  %s = %s\n", tomlKey(k), strings.TrimSpace(strings.TrimPrefix(string(v), "v = ")))
	}
	for _, k := range keys {
		if sub, ok := t[k].(map[string]any); ok {
			b.WriteString(renderTable(header+"."+tomlKey(k), sub))
		}
	}
	return b.String()
}
