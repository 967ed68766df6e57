//! The software performance counters (`--source perf`): per-window CPU time
//! of the watched process's threads, split into vCPU threads (named like
//! QEMU's `CPU <n>/TCG`) and the others, context switches and page faults,
//! compared with what the fixture did and what /proc says. Run as root.

#[macro_use]
mod common;

use common::{Fixture, Recording};

/// The perf features, in column order.
const PERF: [&str; 5] = [
    "perf:task_clock_vcpu_ns",
    "perf:task_clock_other_ns",
    "perf:context_switches",
    "perf:page_faults",
    "perf:cpu_migrations",
];

/// The log line of a process without vCPU-named threads.
const NO_VCPU: &str = "no thread is named like a QEMU vCPU thread";

const MS: u64 = 1_000_000;

/// utime + stime of every thread of `pid`, live or exited, in ns (field 14
/// and 15 of /proc/PID/stat, in clock ticks).
fn process_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / hz
}

/// The number in the last word of a fixture's answer.
fn last_number(reply: &str) -> u64 {
    reply.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Work done in a thread created after counting began (counted through
/// the counters' inheritance, and kept after it exited) and on the main
/// thread: the task clock is the process's CPU time as /proc accounts it,
/// at least what the spinning thread used; naps switch, fresh pages fault.
#[test]
fn task_clock_is_the_process_cpu_time_and_naps_switch_and_pages_fault() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    let before = process_cpu_ns(fx.pid);
    let mut rec = Recording::start(
        &[fx.pid],
        "--source perf --interval 250ms --windows 16",
        "perf.csv",
    );
    let spun = last_number(&fx.ask("spin-new 600 worker"));
    fx.ask("nap 100");
    fx.ask("touch 3000");
    assert!(
        rec.child.try_wait().unwrap().is_none(),
        "the recording ended before the fixture's work did (a slow machine): the totals \
         below would miss some of it"
    );
    let (ds, log) = rec.finish();
    let after = process_cpu_ns(fx.pid);
    assert_eq!(ds.features(), PERF);
    assert_eq!(ds.rows_of(fx.pid).count(), 16);
    let clock = ds.total(fx.pid, "perf:task_clock_other_ns");
    assert_eq!(ds.total(fx.pid, "perf:task_clock_vcpu_ns"), 0);
    assert!(
        clock >= spun * 95 / 100,
        "task clock {} ms, the spinning thread alone used {} ms",
        clock / MS,
        spun / MS
    );
    // /proc's figure spans a little more time than the windows (before the
    // first, after the last, when the fixture waits for input) and is cut
    // to whole clock ticks, for user and system time each.
    let proc_ns = after - before;
    assert!(
        clock <= proc_ns + 40 * MS && clock + 40 * MS + proc_ns / 20 >= proc_ns,
        "task clock {} ms, /proc/PID/stat utime+stime grew by {} ms",
        clock / MS,
        proc_ns / MS
    );
    let switches = ds.total(fx.pid, "perf:context_switches");
    assert!(switches >= 100, "{switches} context switches for 100 naps");
    let faults = ds.total(fx.pid, "perf:page_faults");
    assert!(faults >= 3000, "{faults} page faults for 3000 fresh pages");
    assert!(
        faults < 3000 + 1000,
        "{faults} page faults for 3000 fresh pages"
    );
    assert!(log.contains(NO_VCPU), "{log}");
}

/// Threads that ran before counting began, one named like a QEMU vCPU:
/// its CPU time is `task_clock_vcpu_ns`, the other's `task_clock_other_ns`;
/// QEMU probes count in the same rows.
#[test]
fn a_thread_named_like_a_vcpu_counts_as_vcpu_time_beside_probes() {
    skip_without_bpf!();
    let mut fx = Fixture::start();
    assert_eq!(fx.ask("thread CPU 0/TCG"), "ok thread 0");
    assert_eq!(fx.ask("thread worker"), "ok thread 1");
    let mut rec = Recording::start(
        &[fx.pid],
        "--source qemu,perf --budget none --interval 250ms --windows 12",
        "vcpu.csv",
    );
    let vcpu = last_number(&fx.ask("spin 0 500"));
    let other = last_number(&fx.ask("spin 1 200"));
    fx.fire("tap_send", 321);
    assert!(
        rec.child.try_wait().unwrap().is_none(),
        "the recording ended before the fixture's work did"
    );
    let (ds, log) = rec.finish();
    assert_eq!(ds.total(fx.pid, "qemu:tap_send"), 321);
    let v = ds.total(fx.pid, "perf:task_clock_vcpu_ns");
    let o = ds.total(fx.pid, "perf:task_clock_other_ns");
    // The vCPU thread does nothing but spin.
    assert!(
        v >= vcpu * 95 / 100 && v <= vcpu + 20 * MS,
        "vCPU task clock {} ms for {} ms spun",
        v / MS,
        vcpu / MS
    );
    // The others: the worker's spin and the main thread's answers.
    assert!(
        o >= other * 95 / 100 && o <= other + 150 * MS,
        "other task clock {} ms for {} ms spun",
        o / MS,
        other / MS
    );
    assert!(!log.contains(NO_VCPU), "{log}");
}
