package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is USER_HZ, the unit of /proc/stat and /proc/<pid>/stat times.
const clockTicks = 100

// memKiB is a process's resident and proportional set sizes.
type memKiB struct{ RSS, PSS int64 }

func (m memKiB) add(o memKiB) memKiB { return memKiB{m.RSS + o.RSS, m.PSS + o.PSS} }

// processMemory reads Rss and Pss from /proc/<pid>/smaps_rollup.
func processMemory(pid int) (memKiB, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return memKiB{}, err
	}
	var m memKiB
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			m.RSS = v
		case "Pss:":
			m.PSS = v
		}
	}
	return m, nil
}

// processCPUTicks is utime+stime of pid, in clock ticks.
func processCPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	// Fields after the command (which may hold spaces) start after ") ".
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return utime + stime, nil
}

// machineCPU is the busy and total clock ticks of all CPUs (/proc/stat).
type machineCPU struct{ Busy, Total int64 }

func readMachineCPU() machineCPU {
	b, _ := os.ReadFile("/proc/stat")
	line := strings.SplitN(string(b), "\n", 2)[0]
	f := strings.Fields(line)[1:]
	var c machineCPU
	for i, v := range f {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i >= 8 { // guest times are already counted in user
			break
		}
		c.Total += n
		if i != 3 && i != 4 { // idle, iowait
			c.Busy += n
		}
	}
	return c
}

// busySeconds is the machine's CPU time spent between c and later.
func (c machineCPU) busySeconds(later machineCPU) float64 {
	return float64(later.Busy-c.Busy) / clockTicks
}

// findPluginPID finds the tslink plugin process of this engine: the
// process named /tslink whose /data is this engine's state dir (other
// dockerds on the machine run their own plugins).
func findPluginPID(stateDir string) (int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(stateDir, &want); err != nil {
		return 0, err
	}
	for _, pid := range pidsWithArg0(func(arg0 string, _ []string) bool { return arg0 == "/tslink" }) {
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/root/data", pid), &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no /tslink process with /data = %s", stateDir)
}

// pidsWithArg0 lists the processes whose command line matches.
func pidsWithArg0(match func(arg0 string, args []string) bool) []int {
	var pids []int
	forEachProcess(func(pid int, args []string) {
		if match(args[0], args[1:]) {
			pids = append(pids, pid)
		}
	})
	return pids
}

func forEachProcess(fn func(pid int, args []string)) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		fn(pid, strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"))
	}
}

// anchorPIDs finds the tailscaled processes of the named anchor containers
// (each runs with --statedir=/tmp/tsd-<name>).
func anchorPIDs(names []string) map[string]int {
	want := map[string]string{}
	for _, n := range names {
		want["--statedir=/tmp/tsd-"+n] = n
	}
	found := map[string]int{}
	forEachProcess(func(pid int, args []string) {
		if filepath.Base(args[0]) != "tailscaled" {
			return
		}
		for _, a := range args[1:] {
			if n, ok := want[a]; ok {
				found[n] = pid
			}
		}
	})
	return found
}
