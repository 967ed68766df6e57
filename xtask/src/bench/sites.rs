//! `cargo xtask bench sites`: what one counted probe hit costs on the probe
//! sites of each QEMU build (`cargo xtask qemu --build …`): lab-7.2 and
//! lab-10.0 (5-byte nops, the kernel's optimized uprobes) against stock-10.0
//! (systemtap's 1-byte nops, an int3 trap per hit, as Fedora and RHEL ship
//! QEMU).
//!
//! The workload is QEMU's own code: `qemu-img bench` reading a `null-co://`
//! device, one request at a time, on one thread. Every request passes the
//! same block-layer, coroutine and lock trace points (about 21 hits), so
//! the time a request takes grows by the cost of its hits when vmwatch
//! counts them. Per build and repetition:
//! - detached: the bench run with N and with 2N requests; the difference of
//!   their times over N is the time per request without the start-up;
//! - counted: a long bench run with `vmwatch record --pid` attached to every
//!   probe of qemu-img; each 1-s window gives its requests (`blk_co_preadv`
//!   hits) and all its hits, so time per request and hits per request.
//!
//! cost per hit = (counted − detached time per request) / hits per request.
//! Builds are interleaved within each repetition; figures are medians.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmwatch_core::dataset::Table;

use crate::lab::tools::TempDir;
use crate::qemu::{self, Variant};
use crate::util::{self, note};

#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Interleaved repetitions.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Requests of the shorter detached run (the longer one runs twice as
    /// many).
    #[arg(long, default_value_t = 400_000)]
    pub requests: u64,
    /// Counted windows (1 s each) per repetition.
    #[arg(long, default_value_t = 4)]
    pub windows: u64,
    /// Builds to compare (default: all three).
    #[arg(long = "build", value_enum)]
    pub builds: Vec<Variant>,
    /// Use this vmwatch binary instead of building target/release/vmwatch.
    #[arg(long)]
    pub vmwatch: Option<PathBuf>,
}

/// One repetition on one build.
#[derive(Debug, Clone, Copy)]
struct Sample {
    detached_ns: f64,
    counted_ns: f64,
    hits_per_request: f64,
}

impl Sample {
    fn ns_per_hit(&self) -> f64 {
        (self.counted_ns - self.detached_ns) / self.hits_per_request
    }
}

pub fn run(o: &Opts) -> Result<()> {
    if !util::is_root()? {
        bail!("cargo xtask bench sites needs root (vmwatch's uprobes)");
    }
    let builds = if o.builds.is_empty() {
        Variant::ALL.to_vec()
    } else {
        o.builds.clone()
    };
    let vmwatch = crate::lab::record::vmwatch_binary(o.vmwatch.as_deref())?;
    let mut imgs = Vec::new();
    for v in &builds {
        let b = qemu::ensure(&qemu::Options {
            variant: *v,
            ..Default::default()
        })
        .with_context(|| format!("building QEMU {} failed", v.name()))?;
        let img = b.binary.with_file_name("qemu-img");
        if !img.is_file() {
            bail!("{} has no qemu-img next to it", b.binary.display());
        }
        imgs.push((*v, img));
    }
    let started = Instant::now();
    note(format!(
        "per-hit cost on each build's own probe sites: qemu-img bench on null-co://, \
         {} interleaved repetitions of {} builds (about {} s each)",
        o.reps,
        imgs.len(),
        (o.requests * 3 / 200_000) + o.windows + 4
    ));
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); imgs.len()];
    for rep in 0..o.reps {
        for (i, (v, img)) in imgs.iter().enumerate() {
            let s = measure(&vmwatch, img, o)?;
            note(format!(
                "rep {} {:<10} detached {:.0} ns/request, counted {:.0} ns/request, \
                 {:.1} hits/request: {:.0} ns per hit",
                rep + 1,
                v.name(),
                s.detached_ns,
                s.counted_ns,
                s.hits_per_request,
                s.ns_per_hit()
            ));
            samples[i].push(s);
        }
    }
    println!(
        "\nper counted hit on each build's probe sites (qemu-img bench, null-co://, \
         median of {}; min–max), {}:",
        o.reps,
        util::human_duration(started.elapsed())
    );
    println!("| build | sites | detached, ns/request | counted, ns/request | hits/request | ns per hit |");
    println!("|---|---|---:|---:|---:|---:|");
    for ((v, _), s) in imgs.iter().zip(&samples) {
        let col = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
        let per_hit: Vec<f64> = s.iter().map(Sample::ns_per_hit).collect();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.0} ({:.0}–{:.0}) |",
            v.name(),
            match v.flavour() {
                qemu::Flavour::Lab => "5-byte nop",
                qemu::Flavour::Stock => "1-byte nop",
            },
            col(|x| x.detached_ns),
            col(|x| x.counted_ns),
            col(|x| x.hits_per_request),
            median(per_hit.clone()),
            per_hit.iter().copied().fold(f64::INFINITY, f64::min),
            per_hit.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
    }
    Ok(())
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A child killed and reaped when dropped, on every way out.
pub(super) struct Killed(pub(super) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_cmd(img: &Path, requests: u64) -> Command {
    let mut c = Command::new(img);
    c.args(["bench", "-f", "raw", "-d", "1", "-c"])
        .arg(requests.to_string())
        .arg("null-co://")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Wall time of a detached bench run of `requests`.
fn timed(img: &Path, requests: u64) -> Result<Duration> {
    let t = Instant::now();
    let status = bench_cmd(img, requests)
        .status()
        .with_context(|| format!("could not run {}", img.display()))?;
    if !status.success() {
        bail!("{} bench exited with {status}", img.display());
    }
    Ok(t.elapsed())
}

fn measure(vmwatch: &Path, img: &Path, o: &Opts) -> Result<Sample> {
    let n = o.requests;
    let short = timed(img, n)?;
    let long = timed(img, 2 * n)?;
    let detached_ns = long.saturating_sub(short).as_nanos() as f64 / n as f64;

    // Far more requests than the windows take: killed once they are read.
    let bench = Killed(
        bench_cmd(img, 2_000_000_000)
            .spawn()
            .with_context(|| format!("could not run {}", img.display()))?,
    );
    // vmwatch reads the process's executable: wait for the exec.
    let exe = format!("/proc/{}/exe", bench.0.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&exe).ok().as_deref() != Some(img) {
        if Instant::now() > deadline {
            bail!("{} did not start", img.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = TempDir::create(
        std::env::temp_dir().join(format!("vmwatch-bench-sites-{}", std::process::id())),
    )?;
    let out = dir.0.join("counted.csv");
    let ran = Command::new(vmwatch)
        // Every hit counted: the cost per hit is what is measured.
        .args([
            "record",
            "--budget",
            "none",
            "--interval",
            "1s",
            "--windows",
        ])
        // The first window starts while probes are being attached.
        .arg((o.windows + 1).to_string())
        .arg("--pid")
        .arg(bench.0.id().to_string())
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .output()
        .context("could not run vmwatch record")?;
    drop(bench);
    if !ran.status.success() {
        let err = String::from_utf8_lossy(&ran.stderr);
        bail!(
            "vmwatch record --pid on {} exited with {}: {}",
            img.display(),
            ran.status,
            err.lines().last().unwrap_or("")
        );
    }
    let table = Table::read(&out)?;
    let requests_col = table
        .features
        .iter()
        .position(|f| f == "qemu:blk_co_preadv")
        .context("qemu-img's recording has no qemu:blk_co_preadv column")?;
    let (mut ms, mut requests, mut hits) = (0u64, 0f64, 0f64);
    for (i, key) in table.keys.iter().enumerate().skip(1) {
        let row = table.x.row(i);
        ms += key.duration_ms;
        requests += row[requests_col];
        hits += row.sum();
    }
    if requests < 1.0 {
        bail!("no request was counted in qemu-img's windows");
    }
    Ok(Sample {
        detached_ns,
        counted_ns: ms as f64 * 1e6 / requests,
        hits_per_request: hits / requests,
    })
}
