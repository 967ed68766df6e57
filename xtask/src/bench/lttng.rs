//! LTTng-UST as the paper used it, driven so that it yields the same
//! per-window counts as vmwatch: a session daemon started (and stopped) by
//! the bench, a tracing session on a tmpfs with a 2-s rotation timer, and a
//! counting thread that runs babeltrace2 over each closed chunk and counts
//! events per VM (the `vpid` context) and name.
//!
//! Root applications register with the root session daemon at the fixed
//! path /var/run/lttng (lttng-ust 2.13 has it compiled in), so the rundir
//! cannot be private: the bench refuses to run beside another root
//! lttng-sessiond. LTTNG_HOME (configuration, session files) is private.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cpu;
use crate::util::{self, note};

const GLOBAL_RUNDIR: &str = "/var/run/lttng";

/// A root `lttng-sessiond` (with its consumer daemon), stopped on drop.
pub struct Sessiond {
    child: Child,
    home: PathBuf,
}

impl Sessiond {
    /// Starts the daemon with LTTNG_HOME = `home` and waits until it answers.
    pub fn start(home: &Path) -> Result<Sessiond> {
        if let Some(pid) = running_sessiond() {
            bail!(
                "another root lttng-sessiond (pid {pid}) is running; LTTng-UST applications run by root register only with it, so the bench cannot use its own. Stop it first"
            );
        }
        fs::create_dir_all(home).with_context(|| format!("could not create {}", home.display()))?;
        let log = fs::File::create(home.join("sessiond.log"))
            .context("could not create the lttng-sessiond log")?;
        let mut cmd = Command::new("lttng-sessiond");
        cmd.arg("--no-kernel")
            .env("LTTNG_HOME", home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        util::die_with_parent(&mut cmd, libc::SIGTERM);
        note(format!("$ {}", util::display(&cmd)));
        let child = cmd
            .spawn()
            .context("could not start lttng-sessiond (apt-get install lttng-tools)")?;
        let d = Sessiond {
            child,
            home: home.to_path_buf(),
        };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if d.lttng()
                .arg("list")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return Ok(d);
            }
            if Instant::now() > until {
                bail!(
                    "lttng-sessiond did not answer within 10 s (log: {})",
                    d.home.join("sessiond.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `lttng` client, talking to this daemon.
    pub fn lttng(&self) -> Command {
        let mut c = Command::new("lttng");
        c.env("LTTNG_HOME", &self.home).stdin(Stdio::null());
        c
    }

    fn lttng_run(&self, args: &[&str]) -> Result<()> {
        util::output(self.lttng().args(args)).map(|_| ())
    }

    /// The daemon's pid (the consumer daemon is its child: `cpu::tree_ns`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sessiond {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child: the daemon stops its consumer and exits.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: SIGKILL to the daemon's process group (it and its consumer).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A root session daemon that is already running (not ours).
fn running_sessiond() -> Option<u32> {
    let pid: u32 = fs::read_to_string(Path::new(GLOBAL_RUNDIR).join("lttng-sessiond.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.trim().starts_with("lttng-sessiond").then_some(pid)
}

/// Which events a session enables.
pub enum Events {
    /// `qemu:*`, minus these names (full `qemu:NAME`).
    All { exclude: Vec<String> },
    /// Exactly these (full `qemu:NAME`).
    List(Vec<String>),
}

/// What the counting thread found.
#[derive(Default, Debug, Clone)]
pub struct Counted {
    /// Chunks (windows) counted.
    pub chunks: u64,
    /// Events counted, per chunk, summed over VMs.
    pub events: Vec<u64>,
    /// Events counted per vpid, over all chunks.
    pub per_vpid: HashMap<u32, u64>,
    /// CPU time of the babeltrace2 runs and of parsing their output, ns.
    pub count_ns: u64,
    /// Events the tracer reported as discarded (full buffers).
    pub discarded: u64,
}

/// A running tracing session; destroyed on drop.
pub struct Tracing<'a> {
    d: &'a Sessiond,
    name: String,
    out: PathBuf,
    stop: Arc<AtomicBool>,
    /// The babeltrace2 run in progress (0: none), killed on stop.
    running: Arc<AtomicU32>,
    counted: Arc<Mutex<Counted>>,
    counter: Option<JoinHandle<()>>,
    destroyed: bool,
}

/// Settings of a tracing session.
pub struct TraceOpts<'a> {
    pub name: &'a str,
    /// Output directory (on a tmpfs); must not exist.
    pub out: PathBuf,
    pub events: Events,
    /// Only these processes are traced (LTTng's vpid tracker): other
    /// applications of the same user keep their events disabled.
    pub pids: &'a [u32],
    /// Rotation period (the window); `None`: no rotation, no counting.
    pub rotate: Option<Duration>,
    /// Sub-buffer size and count per CPU (LTTng's defaults discard events
    /// of busy probes such as exec_tb).
    pub subbuf: &'a str,
    pub num_subbuf: u32,
}

impl<'a> Tracing<'a> {
    pub fn start(d: &'a Sessiond, o: TraceOpts<'_>) -> Result<Tracing<'a>> {
        let out_s = o.out.display().to_string();
        d.lttng_run(&["create", o.name, &format!("--output={out_s}")])?;
        let mut t = Tracing {
            d,
            name: o.name.to_string(),
            out: o.out.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            running: Arc::new(AtomicU32::new(0)),
            counted: Arc::new(Mutex::new(Counted::default())),
            counter: None,
            destroyed: false,
        };
        let s = ["-s", o.name];
        let num = o.num_subbuf.to_string();
        d.lttng_run(
            &[
                &["enable-channel", "-u", "ch"][..],
                &s,
                &["--subbuf-size", o.subbuf, "--num-subbuf", &num],
            ]
            .concat(),
        )?;
        d.lttng_run(&[&["add-context", "-u", "-c", "ch", "-t", "vpid"][..], &s].concat())?;
        d.lttng_run(&[&["untrack", "-u", "--vpid", "--all"][..], &s].concat())?;
        let pids: Vec<String> = o.pids.iter().map(u32::to_string).collect();
        let vpids = format!("--vpid={}", pids.join(","));
        d.lttng_run(&[&["track", "-u", &vpids][..], &s].concat())?;
        match &o.events {
            Events::All { exclude } => {
                let ex = exclude.join(",");
                let mut a = vec!["enable-event", "-u", "-c", "ch", "qemu:*"];
                if !exclude.is_empty() {
                    a.extend(["--exclude", &ex]);
                }
                a.extend(s);
                d.lttng_run(&a)?;
            }
            Events::List(names) => {
                if names.is_empty() {
                    bail!("no LTTng events to enable");
                }
                let list = names.join(",");
                d.lttng_run(&[&["enable-event", "-u", "-c", "ch", &list][..], &s].concat())?;
            }
        }
        if let Some(p) = o.rotate {
            let timer = format!("--timer={}ms", p.as_millis());
            d.lttng_run(&[&["enable-rotation", &timer][..], &s].concat())?;
        }
        d.lttng_run(&["start", o.name])?;
        if o.rotate.is_some() {
            let (stop, running, counted, archives) = (
                Arc::clone(&t.stop),
                Arc::clone(&t.running),
                Arc::clone(&t.counted),
                o.out.join("archives"),
            );
            t.counter = Some(std::thread::spawn(move || {
                count_loop(&archives, &stop, &running, &counted)
            }));
        }
        Ok(t)
    }

    pub fn daemon(&self) -> &Sessiond {
        self.d
    }

    /// What was counted so far.
    pub fn counted(&self) -> Counted {
        self.counted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Chunks closed so far (counted or waiting).
    pub fn chunks_closed(&self) -> u64 {
        let counted = self.counted().chunks;
        counted + archive_dirs(&self.out.join("archives")).len() as u64
    }

    /// Stops tracing and counting; chunks not yet counted are dropped.
    pub fn finish(mut self) -> Result<Counted> {
        self.shutdown()?;
        Ok(self.counted())
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        self.stop.store(true, Ordering::SeqCst);
        // A chunk being counted when the round ends is dropped: its
        // babeltrace2 must not run on into the next configuration.
        let pid = self.running.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: SIGKILL to the counting thread's babeltrace2 child (not yet reaped).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let r = self.d.lttng_run(&["destroy", &self.name]);
        if let Some(c) = self.counter.take() {
            let _ = c.join();
        }
        let _ = fs::remove_dir_all(&self.out);
        r
    }
}

impl Drop for Tracing<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            note(format!("destroying LTTng session {}: {e:#}", self.name));
        }
    }
}

/// Closed chunk directories, oldest first (`<begin>-<end>-<index>`).
fn archive_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let idx = n.rsplit('-').next()?.parse().ok()?;
            Some((idx, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn count_loop(archives: &Path, stop: &AtomicBool, running: &AtomicU32, counted: &Mutex<Counted>) {
    while !stop.load(Ordering::SeqCst) {
        let Some(chunk) = archive_dirs(archives).into_iter().next() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match count_chunk(&chunk, running) {
            Ok(_) if stop.load(Ordering::SeqCst) => {}
            Ok(c) => {
                let mut all = counted.lock().unwrap_or_else(|e| e.into_inner());
                all.chunks += 1;
                all.events.push(c.per_vpid.values().sum());
                for (k, v) in c.per_vpid {
                    *all.per_vpid.entry(k).or_default() += v;
                }
                all.count_ns += c.count_ns;
                all.discarded += c.discarded;
            }
            Err(_) if stop.load(Ordering::SeqCst) => {}
            Err(e) => note(format!("counting {}: {e:#}", chunk.display())),
        }
        // A counted chunk is gone (the tmpfs holds only the backlog).
        let _ = fs::remove_dir_all(&chunk);
    }
}

/// Counts the events of one chunk with babeltrace2's text output.
pub fn count_chunk(chunk: &Path, running: &AtomicU32) -> Result<Counted> {
    let parse_t0 = cpu::thread_ns();
    let mut child = Command::new("babeltrace2")
        .arg(chunk)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start babeltrace2 (apt-get install babeltrace2)")?;
    running.store(child.id(), Ordering::SeqCst);
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut c = Counted::default();
    let out = child.stdout.take().context("no stdout pipe")?;
    for line in BufReader::with_capacity(1 << 16, out).split(b'\n') {
        let line = line.context("reading babeltrace2's output")?;
        if let Some(vpid) = parse_vpid(&line) {
            *c.per_vpid.entry(vpid).or_default() += 1;
        }
    }
    let parse_ns = cpu::thread_ns() - parse_t0;
    let waited = cpu::wait_child_ns(child.id());
    running.store(0, Ordering::SeqCst);
    let (status, bt_ns) = waited.context("waiting for babeltrace2")?;
    let stderr = err_thread.join().unwrap_or_default();
    if status != 0 {
        bail!(
            "babeltrace2 failed (status {status}): {}",
            stderr.lines().take(5).collect::<Vec<_>>().join(" / ")
        );
    }
    c.discarded = parse_discarded(&stderr);
    c.count_ns = parse_ns + bt_ns;
    c.chunks = 1;
    Ok(c)
}

/// The `vpid` context of one babeltrace2 text line:
/// `[ts] (+d) host qemu:exec_tb: { cpu_id = 0 }, { vpid = 1234 }, { ... }`.
fn parse_vpid(line: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"{ vpid = ";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = &line[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Sum of `discarded N events` warnings of babeltrace2.
fn parse_discarded(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            let at = l.find("discarded ")? + "discarded ".len();
            l[at..].split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn babeltrace_lines() {
        let l = b"[01:44:15.808351827] (+0.000003917) vm qemu:exec_tb: { cpu_id = 1 }, { vpid = 29776 }, { tb = 0x7F, pc = 0x1 }";
        assert_eq!(parse_vpid(l), Some(29776));
        assert_eq!(
            parse_vpid(b"[x] (+?) vm qemu:a: { cpu_id = 1 }, { a = 1 }"),
            None
        );
        let w = "WARNING: Tracer discarded 3042 events between [a] and [b] in trace \"x\"\nWARNING: Tracer discarded 8 events between";
        assert_eq!(parse_discarded(w), 3050);
    }
}
