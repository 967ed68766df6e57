//! Collector benchmarks (run as root): `cargo bench --bench collector`.
//!
//! - cost per probe hit: detached, attached and watched, attached but not
//!   watched (another process of the same binary is);
//! - attach and detach time for N probe sites of the real QEMU
//!   (`VMWATCH_QEMU`, from `cargo xtask qemu`);
//! - drain cost per window with 1, 8 and 64 watched processes at the full
//!   QEMU feature width.
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
    let fx = fixture_path();
    let qemu = std::env::var_os("VMWATCH_QEMU").map(PathBuf::from);
    println!(
        "machine: {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    bench_hit_cost(&fx);
    bench_syscall_cost(&fx);
    match &qemu {
        Some(q) => bench_attach_detach(q),
        None => println!("SKIPPED attach/detach: set VMWATCH_QEMU (cargo xtask qemu --print-path)"),
    }
    bench_drain(&fx, qemu.as_deref());
}
