//! Collector benchmarks (run as root): `cargo bench --bench collector`.
//!
//! - cost per probe hit: detached, attached and watched, attached but not
//!   watched (another process of the same binary is);
//! - attach and detach time for N probe sites of the real QEMU
//!   (`VMWATCH_QEMU`, from `cargo xtask qemu`);
//! - drain cost per window with 1, 8 and 64 watched processes at the full
//!   QEMU feature width;
//! - what the `perf:` counters cost: the watched threads' context switches
//!   and page faults, and reading a process's counters per window;
//! - what tracking a probe for `seq:` features adds per hit, side by side
//!   with counting it plainly;
//! - what reading a probe's arguments for `arg:` buckets adds per hit, side
//!   by side with counting it plainly.
//!
//! `cargo bench --bench collector -- perf` (or `hits`, `syscalls`,
//! `attach`, `drain`, `seq`, `arg`) runs only the sections named.
//!
//! Every figure is a median of interleaved repetitions; see
//! docs/PERFORMANCE.md for how to read them on a shared machine.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use vmwatch::bpf::BpfObjects;
use vmwatch::counter::bpf::{Collector, CollectorConfig};
use vmwatch::discover::procs::Process;
use vmwatch::discover::stapsdt::UsdtBinary;
use vmwatch_core::features::Columns;

const REPS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn fixture_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "-p", "vmwatch-fixture"])
        .status()
        .unwrap();
    assert!(status.success());
    dir.join("vmwatch-fixture")
}

struct Fixture {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Fixture {
    fn start(path: &Path) -> Self {
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Nanoseconds per hit of `tap_send` fired nonstop for `ms`.
    fn ns_per_hit(&mut self, ms: u64) -> f64 {
        self.ns_per(&format!("burn tap_send {ms}"), ms)
    }

    /// Nanoseconds per getppid(2) called nonstop for `ms`.
    fn ns_per_syscall(&mut self, ms: u64) -> f64 {
        self.ns_per(&format!("getppid-burn {ms}"), ms)
    }

    /// The fixture's answer to `cmd`.
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ok"), "fixture: {line}");
        line.trim().to_string()
    }

    /// Nanoseconds per unit of `cmd`, whose answer ends in `N NS`.
    fn ns_each(&mut self, cmd: &str) -> f64 {
        let line = self.ask(cmd);
        let mut w = line.rsplit(' ');
        let ns: f64 = w.next().unwrap().parse().unwrap();
        let n: f64 = w.next().unwrap().parse().unwrap();
        ns / n
    }

    fn ns_per(&mut self, cmd: &str, ms: u64) -> f64 {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let hits: f64 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        ms as f64 * 1e6 / hits
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collector(obj: &mut BpfObjects, features: Vec<String>, max: u32) -> Collector<'_> {
    Collector::new(
        obj,
        CollectorConfig {
            columns: Columns::new(features.iter().map(|f| f.parse().expect("a feature name"))),
            tracked: Vec::new(),
            max_vms: max,
            kvm: None,
            // The drain and attach costs of exact counting are measured.
            budget: None,
            hit_cost: Some(vmwatch_core::govern::HitCost::flat(1000.0)),
        },
    )
    .expect("load BPF (run as root)")
}

fn fixture_features(bin: &UsdtBinary) -> Vec<String> {
    bin.probes()
        .iter()
        .map(|p| format!("qemu:{}", p.name))
        .collect()
}

fn bench_hit_cost(fx_path: &Path) {
    let bin = UsdtBinary::read(fx_path).unwrap();
    let mut fx = Fixture::start(fx_path);
    let other = Fixture::start(fx_path);
    let mut detached = Vec::new();
    let mut watched = Vec::new();
    let mut unwatched = Vec::new();
    for _ in 0..REPS {
        detached.push(fx.ns_per_hit(200));
        let mut obj = BpfObjects::default();
        let mut c = collector(&mut obj, fixture_features(&bin), 4);
        c.watch(&Process::from_pid(fx.pid()).unwrap(), Some(&bin))
            .unwrap();
        watched.push(fx.ns_per_hit(200));
        c.unwatch(fx.pid());
        // Same binary attached for another process: this one still traps.
        c.watch(&Process::from_pid(other.pid()).unwrap(), Some(&bin))
            .unwrap();
        unwatched.push(fx.ns_per_hit(200));
    }
    let (d, w, u) = (median(detached), median(watched), median(unwatched));
    println!("probe hit cost (median of {REPS}, interleaved):");
    println!("  detached                          {d:8.1} ns/hit");
    println!(
        "  attached, process watched         {w:8.1} ns/hit  (+{:.0} ns)",
        w - d
    );
    println!(
        "  attached, process not watched     {u:8.1} ns/hit  (+{:.0} ns)",
        u - d
    );
}

/// What tracking a probe for `seq:` features adds per hit: `tap_send`
/// fired nonstop on one thread, detached, counted plainly, tracked with
/// its transitions unlisted (`tap_send>tap_send` is not a feature: the
/// per-thread lookup and the pair lookup, no count), and tracked with
/// every hit a listed transition (`seq:tap_send>tap_send`: one more count).
/// Each repetition loads the four in turn.
fn bench_seq_cost(fx_path: &Path) {
    let bin = UsdtBinary::read(fx_path).unwrap();
    let mut fx = Fixture::start(fx_path);
    let process = Process::from_pid(fx.pid()).unwrap();
    let variants: [(&str, &[&str]); 3] = [
        ("counted (qemu:tap_send)", &["qemu:tap_send"]),
        (
            "+ tracked, transition not listed",
            &["qemu:tap_send", "seq:tap_send>qemu_deliver_packet"],
        ),
        (
            "+ tracked, every hit a listed one",
            &["qemu:tap_send", "seq:tap_send>tap_send"],
        ),
    ];
    let mut detached = Vec::new();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut counted = vec![(0u64, 0u64); variants.len()];
    for _ in 0..REPS {
        detached.push(fx.ns_per_hit(300));
        for (i, (_, features)) in variants.iter().enumerate() {
            let features: Vec<String> = features.iter().map(|f| f.to_string()).collect();
            let mut obj = BpfObjects::default();
            let mut c = collector(&mut obj, features.clone(), 4);
            c.watch(&process, Some(&bin)).unwrap();
            c.drain().unwrap();
            ns[i].push(fx.ns_per_hit(300));
            // The counts are checked: each hit counted, each listed
            // transition too.
            let d = c.drain().unwrap();
            let row = &d.samples[0].counts;
            counted[i].0 += row[0];
            counted[i].1 += row.get(1).copied().unwrap_or(0);
            c.unwatch(fx.pid());
        }
    }
    let d = median(detached);
    println!("seq tracking, cost per probe hit (tap_send, median of {REPS}, interleaved):");
    println!("  detached                           {d:8.1} ns/hit");
    let plain = median(ns[0].clone());
    for (i, (what, _)) in variants.iter().enumerate() {
        let m = median(ns[i].clone());
        let extra = if i == 0 {
            format!("(+{:.0} ns over detached)", m - d)
        } else {
            format!("(+{:.0} ns over counted)", m - plain)
        };
        let transitions = if i == 0 {
            String::new()
        } else {
            format!(", {} transitions", counted[i].1)
        };
        println!(
            "  {what:34} {m:8.1} ns/hit  {extra}  [{} hits counted{transitions}]",
            counted[i].0
        );
    }
    assert_eq!(counted[1].1, 0, "an unlisted transition was counted");
    assert!(counted[2].1 + REPS as u64 >= counted[2].0 && counted[2].1 > 0);
}

/// What reading a probe's arguments for `arg:` features adds per hit, each
/// variant side by side with the probe counted plainly: a virtio-blk write
/// request's two arguments bucketed (`nsectors` and `sector`, both
/// registers), and a receive queue's frame length split by the kind of its
/// queue (one argument more, the queue's address, and a hash lookup of its
/// kind). `N` hits of the fixture's QEMU-shaped sites per measurement.
fn bench_arg_cost(fx_path: &Path) {
    const N: usize = 300_000;
    let bin = UsdtBinary::read(fx_path).unwrap();
    let mut fx = Fixture::start(fx_path);
    let process = Process::from_pid(fx.pid()).unwrap();
    struct Variant {
        what: &'static str,
        features: &'static [&'static str],
        cmd: String,
    }
    let blk = format!("blk-write 1500000 8 {N}");
    let rx = format!("queue rx 1500 {N}");
    let variants = [
        Variant {
            what: "virtio_blk_handle_write counted",
            features: &["qemu:virtio_blk_handle_write"],
            cmd: blk.clone(),
        },
        Variant {
            what: "+ nsectors and sector bucketed",
            features: &[
                "qemu:virtio_blk_handle_write",
                "arg:virtio_blk_handle_write:nsectors:8-15",
                "arg:virtio_blk_handle_write:sector:1048576-2097151",
            ],
            cmd: blk.clone(),
        },
        Variant {
            what: "virtqueue_fill counted",
            features: &["qemu:virtqueue_fill"],
            cmd: rx.clone(),
        },
        Variant {
            what: "+ len bucketed by queue kind (rx)",
            features: &["qemu:virtqueue_fill", "arg:virtqueue_fill:len:rx:1024-2047"],
            cmd: rx.clone(),
        },
    ];
    let time = |fx: &mut Fixture, cmd: &str| {
        let t = Instant::now();
        fx.ask(cmd);
        t.elapsed().as_secs_f64() * 1e9 / N as f64
    };
    let mut detached = (Vec::new(), Vec::new());
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut counted = vec![(0u64, 0u64); variants.len()];
    for _ in 0..REPS {
        detached.0.push(time(&mut fx, &blk));
        detached.1.push(time(&mut fx, &rx));
        for (i, v) in variants.iter().enumerate() {
            let features: Vec<String> = v.features.iter().map(|f| f.to_string()).collect();
            let mut obj = BpfObjects::default();
            let mut c = collector(&mut obj, features, 4);
            c.watch(&process, Some(&bin)).unwrap();
            c.drain().unwrap();
            ns[i].push(time(&mut fx, &v.cmd));
            // The counts are checked: every hit counted, and bucketed.
            let d = c.drain().unwrap();
            let row = &d.samples[0].counts;
            counted[i].0 += row[0];
            counted[i].1 += row[1..].iter().sum::<u64>();
            c.unwatch(fx.pid());
        }
    }
    println!("arg buckets, cost per probe hit (median of {REPS}, interleaved):");
    let (d_blk, d_rx) = (median(detached.0), median(detached.1));
    for (i, v) in variants.iter().enumerate() {
        let m = median(ns[i].clone());
        let (base, over) = if i % 2 == 0 {
            let d = if i == 0 { d_blk } else { d_rx };
            println!("  {:34} {d:8.1} ns/hit", "detached");
            (d, "detached")
        } else {
            (median(ns[i - 1].clone()), "counted")
        };
        println!(
            "  {:34} {m:8.1} ns/hit  (+{:.0} ns over {over})  [{} hits counted, {} bucketed]",
            v.what,
            m - base,
            counted[i].0,
            counted[i].1
        );
    }
    let hits = (REPS * N) as u64;
    for (i, (h, _)) in counted.iter().enumerate() {
        assert_eq!(*h, hits, "{}: hits lost", variants[i].what);
    }
    assert_eq!(
        counted[1].1,
        2 * hits,
        "a write request's buckets were lost"
    );
    assert_eq!(counted[3].1, hits, "a received frame's bucket was lost");
}

/// Per-syscall cost: unmonitored, BPF counter watching the process, and
/// `strace -c -f` attached (the paper's baseline).
fn bench_syscall_cost(fx_path: &Path) {
    let mut fx = Fixture::start(fx_path);
    let other = Fixture::start(fx_path);
    let features: Vec<String> = vmwatch_core::features::syscall_features()
        .map(|f| f.to_string())
        .collect();
    let (mut none, mut bpf, mut strace) = (Vec::new(), Vec::new(), Vec::new());
    let mut filtered = Vec::new();
    for _ in 0..REPS {
        none.push(fx.ns_per_syscall(200));
        {
            let mut obj = BpfObjects::default();
            let mut c = collector(&mut obj, features.clone(), 4);
            c.watch(&Process::from_pid(fx.pid()).unwrap(), None)
                .unwrap();
            bpf.push(fx.ns_per_syscall(200));
            c.unwatch(fx.pid());
            c.watch(&Process::from_pid(other.pid()).unwrap(), None)
                .unwrap();
            filtered.push(fx.ns_per_syscall(200));
        }
        let mut st = Command::new("strace")
            .args(["-c", "-f", "-q", "-o", "/dev/null", "-p"])
            .arg(fx.pid().to_string())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (apt-get install strace)");
        std::thread::sleep(Duration::from_millis(300));
        strace.push(fx.ns_per_syscall(200));
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(st.id() as i32, libc::SIGINT) };
        let _ = st.wait();
    }
    let (n, b, s, f) = (median(none), median(bpf), median(strace), median(filtered));
    println!("syscall cost, getppid(2) (median of {REPS}, interleaved):");
    println!("  unmonitored                       {n:8.1} ns/call");
    println!(
        "  BPF counter, process watched      {b:8.1} ns/call  ({:.2}x)",
        b / n
    );
    println!(
        "  BPF counter, process not watched  {f:8.1} ns/call  ({:.2}x)",
        f / n
    );
    println!(
        "  strace -c -f                      {s:8.1} ns/call  ({:.2}x)",
        s / n
    );
}

fn bench_attach_detach(qemu: &Path) {
    let bin = UsdtBinary::read(qemu).unwrap();
    let mut vm = Command::new(qemu)
        .args([
            "-M", "pc", "-accel", "tcg", "-m", "64", "-S", "-display", "none",
        ])
        .args(["-serial", "null", "-monitor", "none", "-parallel", "none"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let process = Process::from_pid(vm.id()).unwrap();
    let all: Vec<String> = bin
        .probes()
        .iter()
        .filter(|p| p.provider == "qemu")
        .map(|p| format!("qemu:{}", p.name))
        .collect();
    println!("attach / detach on {} (median of {REPS}):", qemu.display());
    for n in [10, 100, 1000, all.len()] {
        let feats: Vec<String> = all.iter().take(n).cloned().collect();
        let (mut att, mut det) = (Vec::new(), Vec::new());
        let mut sites = 0;
        for _ in 0..REPS {
            let mut obj = BpfObjects::default();
            let mut c = collector(&mut obj, feats.clone(), 4);
            let t = Instant::now();
            c.watch(&process, Some(&bin)).unwrap();
            att.push(t.elapsed().as_secs_f64() * 1e3);
            sites = c.attachments().map(|a| a.sites).sum();
            let t = Instant::now();
            c.unwatch(process.pid);
            det.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "  {n:5} probes ({sites:5} sites): attach {:8.1} ms   detach {:8.1} ms",
            median(att),
            median(det)
        );
    }
    let _ = vm.kill();
    let _ = vm.wait();
}

fn bench_drain(fx_path: &Path, width_from: Option<&Path>) {
    let fx_bin = UsdtBinary::read(fx_path).unwrap();
    // Full QEMU width (3,081 probes: two counter chunks per VM) when a QEMU
    // is at hand; the fixture's named probes are among them. Without one,
    // the fixture's own 2,105 probes (also two chunks).
    let feats = match width_from {
        Some(q) => UsdtBinary::read(q)
            .unwrap()
            .probes()
            .iter()
            .filter(|p| p.provider == "qemu")
            .map(|p| format!("qemu:{}", p.name))
            .collect(),
        None => fixture_features(&fx_bin),
    };
    let width = feats.len();
    let fixtures: Vec<Fixture> = (0..64).map(|_| Fixture::start(fx_path)).collect();
    println!("drain per window, {width} features (median of 21 drains):");
    for n in [1usize, 8, 64] {
        let mut obj = BpfObjects::default();
        let mut c = collector(&mut obj, feats.clone(), 64);
        for f in fixtures.iter().take(n) {
            c.watch(&Process::from_pid(f.pid()).unwrap(), Some(&fx_bin))
                .unwrap();
        }
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..21 {
            let c0 = thread_cpu();
            let t = Instant::now();
            let d = c.drain().unwrap();
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            cpu.push((thread_cpu() - c0) * 1e3);
            assert_eq!(d.samples.len(), n);
        }
        let (w, u) = (median(wall), median(cpu));
        println!(
            "  {n:3} processes: {w:7.3} ms wall, {u:7.3} ms CPU per window = {:.3} ms CPU per VM",
            u / n as f64
        );
    }
}

/// What the perf counters cost. The watched threads pay at each context
/// switch (their counters are scheduled out and in) and each page fault
/// (the software event is counted): a round trip between two threads
/// pinned to one CPU is two switches, measured unwatched and watched, for
/// threads that ran before the watch (counters of their own) and threads
/// started while watched (counted through inheritance); `touch` faults
/// fresh pages. vmwatch pays per window for reading each process's
/// counters (and looking at its threads), measured on the fixture and on
/// a QEMU when one is at hand.
fn bench_perf_cost(fx_path: &Path, qemu: Option<&Path>) {
    use vmwatch::counter::perf::ProcessCounters;

    let features: Vec<String> = vmwatch_core::features::perf_features()
        .map(|f| f.to_string())
        .collect();
    let mut fx = Fixture::start(fx_path);
    fx.ask("pair");
    let trips = 20_000;
    let pages = 20_000;
    let mut rt = (Vec::new(), Vec::new());
    let mut rt_new = (Vec::new(), Vec::new());
    let mut pf = (Vec::new(), Vec::new());
    let mut switches = Vec::new();
    let switch_col = features
        .iter()
        .position(|n| n == "perf:context_switches")
        .unwrap();
    for _ in 0..REPS {
        rt.0.push(fx.ns_each(&format!("pingpong {trips}")));
        rt_new.0.push(fx.ns_each(&format!("pingpong-new {trips}")));
        pf.0.push(fx.ns_each(&format!("touch {pages}")));
        let mut obj = BpfObjects::default();
        let mut c = collector(&mut obj, features.clone(), 4);
        c.watch(&Process::from_pid(fx.pid()).unwrap(), None)
            .unwrap();
        c.drain().unwrap();
        rt.1.push(fx.ns_each(&format!("pingpong {trips}")));
        let d = c.drain().unwrap();
        switches.push(d.samples[0].counts[switch_col] as f64 / trips as f64);
        rt_new.1.push(fx.ns_each(&format!("pingpong-new {trips}")));
        pf.1.push(fx.ns_each(&format!("touch {pages}")));
    }
    let show = |what: &str, (off, on): (Vec<f64>, Vec<f64>), per: f64| {
        let (off, on) = (median(off), median(on));
        println!(
            "  {what:34} {off:8.0} ns unwatched, {on:8.0} ns watched  (+{:.0} ns per {})",
            (on - off) / per,
            if per == 2.0 { "switch" } else { "fault" }
        );
    };
    println!("perf counters, cost to the watched process (median of {REPS}, interleaved):");
    show("round trip, threads from before", rt, 2.0);
    show("round trip, threads started later", rt_new, 2.0);
    show("page fault", pf, 1.0);
    println!(
        "  context switches counted per round trip: {:.2}",
        median(switches)
    );
    let mut targets = vec![("fixture", fx.pid())];
    let vm = qemu.map(|q| {
        let child = Command::new(q)
            .args(["-M", "pc", "-accel", "tcg", "-m", "64", "-display", "none"])
            .args(["-name", "guest=bench,debug-threads=on"])
            .args(["-serial", "null", "-monitor", "none", "-parallel", "none"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        child
    });
    if let Some(vm) = &vm {
        targets.push(("QEMU (TCG, 1 vCPU)", vm.id()));
    }
    println!("perf counters, cost to vmwatch (median of {REPS} x 200 reads):");
    for (what, pid) in targets {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count();
        let (mut open, mut read) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            let t = Instant::now();
            let mut p = ProcessCounters::open(pid).unwrap();
            open.push(t.elapsed().as_secs_f64() * 1e6);
            let c0 = thread_cpu();
            for _ in 0..200 {
                std::hint::black_box(p.read());
            }
            read.push((thread_cpu() - c0) * 1e6 / 200.0);
        }
        println!(
            "  {what:20} {threads:2} threads: open {:7.1} us, read {:6.1} us CPU per window",
            median(open),
            median(read)
        );
    }
    if let Some(mut vm) = vm {
        let _ = vm.kill();
        let _ = vm.wait();
    }
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("collector bench: run with `cargo bench --bench collector` (as root)");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED collector bench: needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)");
        return;
    }
    // Sections named after `--bench` (e.g. `-- perf`); none: all.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let fx = fixture_path();
    let qemu = std::env::var_os("VMWATCH_QEMU").map(PathBuf::from);
    println!(
        "machine: {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    if run("hits") {
        bench_hit_cost(&fx);
    }
    if run("syscalls") {
        bench_syscall_cost(&fx);
    }
    if run("attach") {
        match &qemu {
            Some(q) => bench_attach_detach(q),
            None => {
                println!("SKIPPED attach/detach: set VMWATCH_QEMU (cargo xtask qemu --print-path)")
            }
        }
    }
    if run("drain") {
        bench_drain(&fx, qemu.as_deref());
    }
    if run("perf") {
        bench_perf_cost(&fx, qemu.as_deref());
    }
    if run("seq") {
        bench_seq_cost(&fx);
    }
    if run("arg") {
        bench_arg_cost(&fx);
    }
}
