//! What one counted USDT hit costs the traced thread on this host, measured
//! at start-up.
//!
//! The cost governor charges each attached probe its hit rate × the cost of
//! one hit, and that cost is not a constant: a uprobe on a 5-byte nop
//! (`0f 1f 44 00 00`) is entered through a call into a trampoline and the
//! `uprobe` syscall once Linux (6.18 on) has optimized it after its first
//! hit, while one on a 1-byte `nop` (what Debian's `sys/sdt.h` emits) traps
//! (int3) on every hit and costs about twice as much; both vary between
//! hosts (CPU, kernel, mitigations) by as much again. So [`measure`] times
//! both kinds of site on the running host, with the program vmwatch counts
//! with, instead of trusting a figure measured elsewhere.
//!
//! How: four tiny functions in vmwatch's own text (below), two of which get
//! a uprobe through one `uprobe_multi` link restricted to this process; the
//! calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, kernel time
//! included) of N calls of an attached function against N calls of its
//! unattached twin, median of interleaved repetitions, is the cost of N hits.
//!
//! What is left out: vmwatch does not watch itself, so the program returns
//! after its `watched` lookup misses, without the counter update a hit of a
//! watched QEMU also pays (a per-CPU array lookup and an atomic add, tens of
//! ns). A hit elsewhere also pays for the programs attached at the time: with
//! the `syscalls` source loaded, an optimized hit's `uprobe` syscall passes
//! `sys_enter` too, which this measures only if the caller's kernel has that
//! program attached when it calls [`measure`]. Cache and TLB misses of a real
//! QEMU's sites (spread over its text) are not reproduced either.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use libbpf_rs::{ProgramMut, UprobeMultiOpts};

use crate::attach::semaphores;
use crate::error::{Error, Result};

/// The cost of one counted hit, in CPU time of the hitting thread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// ns per hit on a 5-byte-nop site (optimized where the kernel does).
    pub nop5_ns: f64,
    /// ns per hit on a 1-byte-nop site (an int3 trap per hit).
    pub trap_ns: f64,
    /// Wall-clock time the measurement took, attach and detach included.
    pub took: Duration,
}

/// Repetitions of each timing, interleaved; the medians are kept.
const REPS: usize = 5;
/// Untimed hits on each attached site before timing: the first hit of the
/// 5-byte site is where the kernel optimizes it.
const WARMUP: u32 = 2_000;
/// Timed hits of the 1-byte site during warm-up, to choose N.
const PROBE_HITS: u32 = 2_000;
/// CPU time one repetition of the 1-byte site should take.
const TARGET: Duration = Duration::from_millis(15);
/// Bounds on N: enough hits to dwarf the clock's resolution; few enough
/// that a slow host still finishes well within half a second.
const MIN_HITS: u32 = 1_000;
const MAX_HITS: u32 = 100_000;
/// Beyond this a figure is a broken measurement, not a slow host.
const MAX_NS: f64 = 100_000.0;

type Site = unsafe extern "C" fn();

// Each function is its probe site followed by `ret`; the `_base` twins are
// the same code, never attached, for the baseline. Global, unique names, so
// the linker keeps one copy and no other symbol can be confused with them.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.vmwatch_calibrate,\"ax\",@progbits",
    ".p2align 4",
    ".globl vmwatch_calibrate_nop5",
    ".type vmwatch_calibrate_nop5,@function",
    "vmwatch_calibrate_nop5:",
    ".byte 0x0f,0x1f,0x44,0x00,0x00",
    "ret",
    ".size vmwatch_calibrate_nop5, .-vmwatch_calibrate_nop5",
    ".p2align 4",
    ".globl vmwatch_calibrate_nop5_base",
    ".type vmwatch_calibrate_nop5_base,@function",
    "vmwatch_calibrate_nop5_base:",
    ".byte 0x0f,0x1f,0x44,0x00,0x00",
    "ret",
    ".size vmwatch_calibrate_nop5_base, .-vmwatch_calibrate_nop5_base",
    ".p2align 4",
    ".globl vmwatch_calibrate_nop1",
    ".type vmwatch_calibrate_nop1,@function",
    "vmwatch_calibrate_nop1:",
    "nop",
    "ret",
    ".size vmwatch_calibrate_nop1, .-vmwatch_calibrate_nop1",
    ".p2align 4",
    ".globl vmwatch_calibrate_nop1_base",
    ".type vmwatch_calibrate_nop1_base,@function",
    "vmwatch_calibrate_nop1_base:",
    "nop",
    "ret",
    ".size vmwatch_calibrate_nop1_base, .-vmwatch_calibrate_nop1_base",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn vmwatch_calibrate_nop5();
    fn vmwatch_calibrate_nop5_base();
    fn vmwatch_calibrate_nop1();
    fn vmwatch_calibrate_nop1_base();
}

const NOP5: [u8; 6] = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3];
const NOP1: [u8; 2] = [0x90, 0xc3];

/// Times hits of a 5-byte-nop and a 1-byte-nop site with `prog` (vmwatch's
/// `count_usdt`) attached to them in this process only. Takes about 0.2 s
/// of the calling thread; the uprobes are gone when it returns. An error
/// (no `uprobe_multi`, the executable's mapping not found, an implausible
/// figure) means the caller keeps its configured cost.
#[cfg(target_arch = "x86_64")]
pub fn measure(prog: &ProgramMut<'_>) -> Result<Measured> {
    let t0 = Instant::now();
    let (nop5, nop5_base, nop1, nop1_base): (Site, Site, Site, Site) = (
        vmwatch_calibrate_nop5,
        vmwatch_calibrate_nop5_base,
        vmwatch_calibrate_nop1,
        vmwatch_calibrate_nop1_base,
    );
    // Another tracer's uprobe (an int3 already there) would be measured too.
    for (f, code) in [
        (nop5, &NOP5[..]),
        (nop5_base, &NOP5[..]),
        (nop1, &NOP1[..]),
        (nop1_base, &NOP1[..]),
    ] {
        if code_at(f, code.len()) != code {
            return Err(Error::Invalid(format!(
                "the calibration function at {:#x} holds {:02x?}, not {code:02x?} (another \
                 uprobe on it?)",
                f as usize,
                code_at(f, code.len())
            )));
        }
    }
    // The mapping of the running executable holding the functions:
    // /proc/self/exe is that file even if it was replaced on disk since.
    let exe = Path::new("/proc/self/exe");
    let id = semaphores::file_id(exe).map_err(|e| Error::read(exe, e))?;
    let maps = semaphores::mappings(std::process::id(), id)?;
    let offset_of = |f: Site| {
        let addr = f as usize as u64;
        maps.iter()
            .find(|m| addr >= m.start && addr < m.end)
            .map(|m| (addr - m.start + m.offset) as usize)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the calibration function at {addr:#x} lies in no mapping of the executable"
                ))
            })
    };
    let opts = UprobeMultiOpts {
        offsets: vec![offset_of(nop5)?, offset_of(nop1)?],
        // Any cookie: vmwatch is not watched, so the program returns before
        // it reads it (and a column this large would not be counted).
        cookies: vec![u64::from(u32::MAX); 2],
        ..Default::default()
    };
    // Restricted to this process: another vmwatch running the same file
    // gets no breakpoint.
    let pid = std::process::id() as i32;
    let link = prog
        .attach_uprobe_multi_with_opts(pid, exe, "", opts)
        .map_err(|e| Error::bpf("attaching the calibration uprobes to vmwatch itself", e))?;

    hits(nop5, WARMUP);
    hits(nop1, WARMUP);
    let nop5_code = code_at(nop5, 5);
    tracing::debug!(
        "calibration: the 5-byte site reads {nop5_code:02x?} after warm-up ({})",
        match nop5_code[0] {
            0xe8 => "optimized: a call into the uprobe trampoline",
            0xcc => "not optimized: an int3 per hit",
            _ => "neither a call nor an int3",
        }
    );
    let probe = cpu_time(nop1, PROBE_HITS)?;
    let n = hits_for(probe / PROBE_HITS);

    // Baseline and attached in turn, so that a change of CPU speed or load
    // during the measurement falls on both alike.
    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..REPS {
        for (t, f) in times.iter_mut().zip([nop5_base, nop5, nop1_base, nop1]) {
            t.push(cpu_time(f, n)?);
        }
    }
    drop(link);

    let mut per_hit = |attached: usize, baseline: usize| {
        let added =
            median(&mut times[attached]).as_secs_f64() - median(&mut times[baseline]).as_secs_f64();
        added * 1e9 / f64::from(n)
    };
    let nop5_ns = per_hit(1, 0);
    let trap_ns = per_hit(3, 2);
    for (what, ns) in [("a 5-byte nop", nop5_ns), ("a 1-byte nop", trap_ns)] {
        if !(ns.is_finite() && ns > 0.0 && ns <= MAX_NS) {
            return Err(Error::Invalid(format!(
                "timing {n} uprobe hits on {what} gave {ns:.1} ns per hit, not a plausible cost \
                 (0 to {MAX_NS} ns)"
            )));
        }
    }
    let took = t0.elapsed();
    tracing::debug!(
        "calibration: {nop5_ns:.0} ns per hit on 5-byte-nop sites, {trap_ns:.0} on 1-byte ones \
         ({REPS} × {n} hits, {took:?})"
    );
    Ok(Measured {
        nop5_ns,
        trap_ns,
        took,
    })
}

/// Only x86-64 has the calibration functions.
#[cfg(not(target_arch = "x86_64"))]
pub fn measure(_prog: &ProgramMut<'_>) -> Result<Measured> {
    Err(Error::Invalid(
        "calibrating the cost of a uprobe hit is implemented on x86-64 only".into(),
    ))
}

/// The first `len` bytes of `f`'s code.
fn code_at(f: Site, len: usize) -> Vec<u8> {
    // SAFETY: `f` is one of the functions above, at least `len` bytes of
    // readable text.
    unsafe { std::slice::from_raw_parts(f as usize as *const u8, len) }.to_vec()
}

/// Calls `f` `n` times, through a pointer the compiler cannot see through.
fn hits(f: Site, n: u32) {
    let f = black_box(f);
    for _ in 0..n {
        // SAFETY: the functions above take nothing, touch nothing and return.
        unsafe { black_box(f)() };
    }
}

/// CPU time of this thread for `n` calls of `f`.
fn cpu_time(f: Site, n: u32) -> Result<Duration> {
    let start = thread_cpu_time()?;
    hits(f, n);
    Ok(thread_cpu_time()?.saturating_sub(start))
}

fn thread_cpu_time() -> Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Err(Error::io(
            "reading the thread's CPU time",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// N such that N hits of the 1-byte site take about [`TARGET`], given one
/// hit's time from the warm-up.
fn hits_for(one: Duration) -> u32 {
    let n = TARGET.as_nanos() / one.as_nanos().max(1);
    n.clamp(u128::from(MIN_HITS), u128::from(MAX_HITS)) as u32
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_per_repetition_stay_in_bounds() {
        assert_eq!(hits_for(Duration::from_nanos(750)), 20_000);
        assert_eq!(hits_for(Duration::ZERO), MAX_HITS);
        assert_eq!(hits_for(Duration::from_micros(50)), MIN_HITS);
    }

    #[test]
    fn median_of_odd_and_even() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&mut [ms(4), ms(1), ms(3), ms(2)]), ms(3));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn calibration_functions_are_the_sites_and_in_the_executable() {
        assert_eq!(code_at(vmwatch_calibrate_nop5, 6), NOP5);
        assert_eq!(code_at(vmwatch_calibrate_nop1, 2), NOP1);
        hits(vmwatch_calibrate_nop5, 3);
        let exe = Path::new("/proc/self/exe");
        let maps =
            semaphores::mappings(std::process::id(), semaphores::file_id(exe).unwrap()).unwrap();
        let nop1: Site = vmwatch_calibrate_nop1;
        let addr = nop1 as usize as u64;
        assert!(maps.iter().any(|m| addr >= m.start && addr < m.end));
    }
}
