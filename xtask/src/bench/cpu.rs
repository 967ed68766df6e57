//! CPU time of process trees from /proc, in nanoseconds.
//!
//! `/proc/PID/stat`'s utime/stime come in clock ticks (10 ms here), too
//! coarse for a collector that spends tens of microseconds per window, so
//! live threads are read from `/proc/PID/task/TID/schedstat` (ns of run
//! time). Reaped children only survive as the parent's cutime/cstime
//! (ticks); those matter for strace, whose per-window runs cost far more
//! than a tick.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second of /proc's stat times (`getconf CLK_TCK`).
fn tick_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / if hz > 0 { hz as u64 } else { 100 }
}

/// (ppid, cutime + cstime in ticks) of a process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, cutime/cstime 16/17.
    let ppid = f.get(1)?.parse().ok()?;
    let cutime: u64 = f.get(13)?.parse().ok()?;
    let cstime: u64 = f.get(14)?.parse().ok()?;
    Some((ppid, cutime + cstime))
}

/// Run time of every live thread of `pid`, in ns.
fn threads_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time (ns) of one process: its live threads plus its reaped children.
pub fn process_ns(pid: u32) -> u64 {
    let children = stat(pid).map_or(0, |(_, c)| c * tick_ns());
    threads_ns(pid) + children
}

/// CPU time (ns) of the processes `roots` and all their live descendants
/// (each with its reaped children).
pub fn tree_ns(roots: &[u32]) -> u64 {
    let mut kids: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                kids.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut total = 0;
    let mut todo: Vec<u32> = roots.to_vec();
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        total += process_ns(p);
        if let Some(k) = kids.get(&p) {
            todo.extend(k);
        }
    }
    total
}

/// CPU time (ns) of the calling thread.
pub fn thread_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits for child `pid` and returns its CPU time (ns, user + system,
/// including its own reaped children) from wait4's rusage.
pub fn wait_child_ns(pid: u32) -> std::io::Result<(libc::c_int, u64)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; pointers are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child with valid pointers.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok((status, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time() {
        let me = std::process::id();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(process_ns(me) > 0);
        assert!(tree_ns(&[me]) >= process_ns(me) / 2);
        assert!(thread_ns() > 0);
    }
}
