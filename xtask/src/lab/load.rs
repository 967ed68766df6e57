//! The host-side client load of the web scenarios: HTTP GETs of the guest's
//! shop (CGI pages and static pages) at a seeded, randomly varying rate, sent
//! from a thread inside the lab's network namespace.
//!
//! Arrivals are Poisson at the current rate ([`Schedule`]); a fixed pool of
//! workers sends them (one connection per request, `Connection: close`), so a
//! guest that cannot keep up sees at most [`WORKERS`] requests in flight and the
//! rest are counted as skipped rather than piling up. Everything stops at the
//! end of the given duration, or earlier when the [`LoadGen`] is dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::net::Net;
use crate::util::Worker;

/// Requests in flight at most.
pub const WORKERS: usize = 8;
/// `web`: the rate is drawn uniformly from this range (requests/s). The
/// guest serves about 3 requests/s of the mix at most under TCG with every
/// probe counted (docs/LAB.md), so it serves all of these, and a peak of
/// twice web's top still fits …
pub const WEB_RATE: (f64, f64) = (0.5, 1.5);
/// … and redrawn every this many seconds.
pub const WEB_SEGMENT_S: u64 = 5;
/// `web-peak`: a sustained rate (requests/s), three times `web`'s mean and
/// twice its top, at what the guest can serve: more than twice the requests
/// `web` serves (issue 14), and still normal, not a guest turned away.
pub const PEAK_RATE: f64 = 3.0;
/// Per-request connect/read timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The client load profile of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Rate drawn from [`WEB_RATE`] every [`WEB_SEGMENT_S`] seconds.
    Web,
    /// [`PEAK_RATE`], constant.
    Peak,
}

/// SplitMix64: small, seedable, good enough for load shaping.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given rate (mean 1/rate).
    pub fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
}

/// The request rate over time: piecewise constant segments.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// (segment length, requests per second).
    pub segments: Vec<(Duration, f64)>,
}

impl Schedule {
    /// The schedule of `profile` covering at least `total`.
    pub fn new(profile: Profile, seed: u64, total: Duration) -> Schedule {
        match profile {
            Profile::Peak => Schedule {
                segments: vec![(total, PEAK_RATE)],
            },
            Profile::Web => {
                let mut rng = Rng::new(seed);
                let seg = Duration::from_secs(WEB_SEGMENT_S);
                let n = total.as_secs().div_ceil(WEB_SEGMENT_S).max(1);
                Schedule {
                    segments: (0..n)
                        .map(|_| (seg, WEB_RATE.0 + rng.unit() * (WEB_RATE.1 - WEB_RATE.0)))
                        .collect(),
                }
            }
        }
    }

    /// The rate at `t` from the start (the last segment's rate beyond the end).
    pub fn rate_at(&self, t: Duration) -> f64 {
        let mut end = Duration::ZERO;
        for (len, rate) in &self.segments {
            end += *len;
            if t < end {
                return *rate;
            }
        }
        self.segments.last().map_or(0.0, |s| s.1)
    }

    /// A short description, e.g. `0.5-1.5 req/s (mean 1.0), changing every 5s`.
    pub fn describe(&self) -> String {
        let rates: Vec<f64> = self.segments.iter().map(|s| s.1).collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        if rates.is_empty() || min == max {
            return format!("{max:.1} req/s constant");
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        format!(
            "{min:.1}-{max:.1} req/s (mean {mean:.2}), changing every {}s",
            self.segments[0].0.as_secs()
        )
    }
}

/// The path of a random request of the shop's mix: searches, item pages,
/// orders, the report and static pages.
pub fn request_path(rng: &mut Rng) -> String {
    const QUERIES: &[&str] = &[
        "amber", "cedar", "frost", "harbor", "lunar", "maple", "opal", "river", "solar", "tools",
        "books", "garden", "kitchen", "toys",
    ];
    const STATIC: &[&str] = &[
        "/",
        "/static/small.html",
        "/static/medium.html",
        "/static/large.html",
    ];
    match rng.range(0, 99) {
        0..=34 => format!(
            "/cgi-bin/search?q={}",
            QUERIES[rng.range(0, QUERIES.len() as u32 - 1) as usize]
        ),
        35..=59 => format!("/cgi-bin/item?id={}", rng.range(1, 3000)),
        60..=69 => format!(
            "/cgi-bin/order?id={}&qty={}",
            rng.range(1, 3000),
            rng.range(1, 5)
        ),
        70..=74 => "/cgi-bin/report".to_string(),
        _ => STATIC[rng.range(0, STATIC.len() as u32 - 1) as usize].to_string(),
    }
}

/// One `GET path` to `addr`; returns the status code and the body length.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, usize)> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("could not connect to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: vmwatch-lab\r\nConnection: close\r\n\r\n",
        addr.ip()
    )
    .with_context(|| format!("could not send a request to {addr}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("could not read the answer of {addr} to GET {path}"))?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{addr} answered GET {path} with no HTTP status: {head:?}"))?;
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| buf.len() - at - 4);
    Ok((status, body))
}

/// Counts of a load run.
#[derive(Debug, Default)]
pub struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    latency_us: AtomicU64,
}

/// A summary of [`Stats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    pub mean_latency_ms: f64,
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.0}s ({:.1}/s): {} ok, {} failed, {} skipped (guest busy), mean latency {:.0} ms",
            self.sent,
            self.seconds,
            self.sent as f64 / self.seconds.max(0.001),
            self.ok,
            self.failed,
            self.skipped,
            self.mean_latency_ms
        )
    }
}

/// A running load generator; dropping it stops it.
pub struct LoadGen {
    stats: Arc<Stats>,
    started: Instant,
    worker: Worker,
    error: Arc<Mutex<Option<String>>>,
}

impl LoadGen {
    /// Starts sending requests to `target` (port 80) inside `net`, for at most
    /// `duration`.
    pub fn start(
        net: &Net,
        target: &str,
        profile: Profile,
        seed: u64,
        duration: Duration,
    ) -> Result<LoadGen> {
        let addr: SocketAddr = format!("{target}:80")
            .parse()
            .with_context(|| format!("bad target address {target}"))?;
        let schedule = Schedule::new(profile, seed, duration);
        crate::util::note(format!(
            "web load on http://{target}/: {} for at most {}s (seed {seed})",
            schedule.describe(),
            duration.as_secs()
        ));
        let stats = Arc::new(Stats::default());
        let error = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let ns = net.path();
        let name = net.name().to_string();
        let (stats2, error2) = (stats.clone(), error.clone());
        let worker = Worker::spawn("lab-load", move |stop| {
            if let Err(e) = enter(&ns, &name) {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            if let Err(e) = drive(addr, schedule, seed, duration, stop, &stats2) {
                *error2.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
            }
        })
        .context("could not start the load generator thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the load generator could not start: {e}"),
            Err(_) => bail!("the load generator thread died"),
        }
        Ok(LoadGen {
            stats,
            started: Instant::now(),
            worker,
            error,
        })
    }

    /// Counts so far.
    pub fn summary(&self) -> Summary {
        let s = &self.stats;
        let done = s.ok.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed);
        Summary {
            sent: s.sent.load(Ordering::Relaxed),
            ok: s.ok.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            mean_latency_ms: s.latency_us.load(Ordering::Relaxed) as f64
                / 1000.0
                / done.max(1) as f64,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Stops the load and returns its summary (and an error the generator hit).
    pub fn stop(mut self) -> (Summary, Option<String>) {
        self.worker.halt();
        let e = self.error.lock().unwrap_or_else(|e| e.into_inner()).take();
        (self.summary(), e)
    }
}

fn enter(ns: &std::path::Path, name: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(ns).with_context(|| format!("could not open {}", ns.display()))?;
    // SAFETY: setns on a valid fd; this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("could not enter the network namespace {name}"));
    }
    Ok(())
}

/// The dispatcher: Poisson arrivals at the schedule's rate, handed to workers
/// (threads spawned here inherit the namespace).
fn drive(
    addr: SocketAddr,
    schedule: Schedule,
    seed: u64,
    duration: Duration,
    stop: &AtomicBool,
    stats: &Arc<Stats>,
) -> Result<()> {
    let (tx, rx) = mpsc::sync_channel::<String>(0);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let rx = rx.clone();
        let stats = stats.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("lab-load-{i}"))
                .spawn(move || loop {
                    let path = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(p) => p,
                        Err(_) => return,
                    };
                    let t = Instant::now();
                    let ok = matches!(get(addr, &path), Ok((200, _)));
                    stats
                        .latency_us
                        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if ok {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .context("could not start a load worker")?,
        );
    }
    let mut rng = Rng::new(seed ^ 0x6c6f_6164);
    let start = Instant::now();
    let end = start + duration;
    let mut next = start;
    while !stop.load(Ordering::SeqCst) && next < end {
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        let path = request_path(&mut rng);
        match tx.try_send(path) {
            Ok(()) => stats.sent.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Full(_)) => stats.skipped.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Disconnected(_)) => bail!("the load workers died"),
        };
        // A floor so a zero rate cannot stall the dispatcher forever.
        let rate = schedule.rate_at(next - start).max(0.1);
        next += Duration::from_secs_f64(rng.exp(rate));
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// Waits until `GET /` on `target` answers 200 from inside `net` (the guest's
/// web server is reachable over the lab network); returns the time it took.
pub fn wait_http(net: &Net, target: &str, timeout: Duration) -> Result<Duration> {
    let addr: SocketAddr = format!("{target}:80")
        .parse()
        .with_context(|| format!("bad target address {target}"))?;
    let ns = net.path();
    let name = net.name().to_string();
    std::thread::spawn(move || -> Result<Duration> {
        enter(&ns, &name)?;
        let start = Instant::now();
        loop {
            let last = match get(addr, "/") {
                Ok((200, _)) => return Ok(start.elapsed()),
                Ok((code, _)) => format!("status {code}"),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() >= timeout {
                bail!(
                    "the guest's web server at http://{addr}/ did not answer within {}s over the lab network (last: {last})",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .join()
    .map_err(|_| anyhow!("the HTTP check thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_schedule_is_seeded_and_in_range() {
        let total = Duration::from_secs(300);
        let a = Schedule::new(Profile::Web, 7, total);
        assert_eq!(a, Schedule::new(Profile::Web, 7, total));
        assert_ne!(a, Schedule::new(Profile::Web, 8, total));
        assert_eq!(a.segments.len(), 60);
        assert!(a.segments.iter().all(
            |&(len, r)| len.as_secs() == WEB_SEGMENT_S && (WEB_RATE.0..WEB_RATE.1).contains(&r)
        ));
        // It does vary, over most of the range, around its middle.
        let rates: Vec<f64> = a.segments.iter().map(|s| s.1).collect();
        let (lo, hi) = (
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(0.0, f64::max),
        );
        assert!(lo < WEB_RATE.0 + 0.2 && hi > WEB_RATE.1 - 0.2, "{lo}-{hi}");
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        assert!(
            (mean - (WEB_RATE.0 + WEB_RATE.1) / 2.0).abs() < 0.15,
            "{mean}"
        );
        // web-peak asks for at least twice web's top rate.
        assert!(PEAK_RATE >= 2.0 * WEB_RATE.1);
        assert_eq!(a.rate_at(Duration::ZERO), a.segments[0].1);
        assert_eq!(a.rate_at(Duration::from_secs(7)), a.segments[1].1);
        assert_eq!(a.rate_at(Duration::from_secs(10_000)), a.segments[59].1);
        assert!(
            a.describe().contains("changing every 5s"),
            "{}",
            a.describe()
        );
    }

    #[test]
    fn peak_schedule_is_constant_and_above_web() {
        let p = Schedule::new(Profile::Peak, 1, Duration::from_secs(60));
        assert_eq!(p.rate_at(Duration::from_secs(59)), PEAK_RATE);
        assert!(PEAK_RATE > WEB_RATE.1);
        assert_eq!(p.describe(), format!("{PEAK_RATE:.1} req/s constant"));
        // A short total still gets one segment.
        assert_eq!(
            Schedule::new(Profile::Web, 1, Duration::from_secs(1))
                .segments
                .len(),
            1
        );
    }

    #[test]
    fn exponential_mean() {
        let mut rng = Rng::new(3);
        let n = 20_000;
        let mean = (0..n).map(|_| rng.exp(10.0)).sum::<f64>() / f64::from(n);
        assert!((mean - 0.1).abs() < 0.005, "{mean}");
    }

    #[test]
    fn request_mix() {
        let mut rng = Rng::new(5);
        let paths: Vec<String> = (0..1000).map(|_| request_path(&mut rng)).collect();
        let share = |p: &str| paths.iter().filter(|x| x.starts_with(p)).count();
        assert!((300..400).contains(&share("/cgi-bin/search?q=")));
        assert!((200..300).contains(&share("/cgi-bin/item?id=")));
        assert!(share("/cgi-bin/order?id=") > 50);
        assert!(share("/cgi-bin/report") > 20);
        assert!(share("/static/") > 100);
        assert!(paths.iter().all(|p| p.starts_with('/') && !p.contains(' ')));
    }
}
