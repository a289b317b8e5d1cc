package benchtest

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Mem is the memory of one process, in bytes, from /proc/PID/status and
// /proc/PID/smaps_rollup.
type Mem struct {
	RSS     int64 `json:"rss"`      // VmRSS
	RSSAnon int64 `json:"rss_anon"` // RssAnon: heap, stacks, Go's arenas
	RSSFile int64 `json:"rss_file"` // RssFile: the binary's pages (and other files)
	// RssShmem: pages of tmpfs files (a binary kept on a tmpfs counts here,
	// not in RssFile) and shared memory. VmRSS = RssAnon+RssFile+RssShmem.
	RSSShmem int64 `json:"rss_shmem"`
	PSS      int64 `json:"pss"` // Pss: RSS with shared pages divided among the processes sharing them
	PSSAnon  int64 `json:"pss_anon"`
	PSSFile  int64 `json:"pss_file"`
}

// ReadMem reads the memory of process pid.
func ReadMem(pid int) (Mem, error) {
	var m Mem
	status, err := readKB(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	rollup, err := readKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return m, err
	}
	m.RSS, m.RSSAnon, m.RSSFile, m.RSSShmem = status["VmRSS"], status["RssAnon"], status["RssFile"], status["RssShmem"]
	m.PSS, m.PSSAnon, m.PSSFile = rollup["Pss"], rollup["Pss_Anon"], rollup["Pss_File"]
	if m.RSS == 0 {
		return m, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return m, nil
}

// readKB reads "Key:   123 kB" lines into bytes by key.
func readKB(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err == nil {
			out[k] = n << 10
		}
	}
	return out, sc.Err()
}

// Mapping is the resident memory of one kind of mapping of a process.
type Mapping struct {
	Name string `json:"name"` // file path, "[heap]", "[stack]", or "anonymous"
	RSS  int64  `json:"rss"`
	PSS  int64  `json:"pss"`
}

// Mappings sums /proc/PID/smaps by mapping name (anonymous mappings, where
// Go keeps its heap, arenas and stacks, under "anonymous"), largest RSS first.
func Mappings(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	by := map[string]*Mapping{}
	var cur *Mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") {
			// A mapping header: addr perms offset dev inode [name]
			name := "anonymous"
			if len(fields) >= 6 {
				name = strings.Join(fields[5:], " ")
			}
			if by[name] == nil {
				by[name] = &Mapping{Name: name}
			}
			cur = by[name]
			continue
		}
		if cur == nil || len(fields) != 3 || fields[2] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "Rss:":
			cur.RSS += n << 10
		case "Pss:":
			cur.PSS += n << 10
		}
	}
	out := make([]Mapping, 0, len(by))
	for _, m := range by {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].RSS > out[j].RSS })
	return out, sc.Err()
}
