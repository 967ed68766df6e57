//! `--source strace`: the paper's syscall baseline. Runs the real `strace`
//! in counting mode (`-c -f`) attached to each watched process and turns its
//! summaries into per-window `sys:<name>` counts.
//!
//! strace prints a summary only when it detaches, so each window is one
//! strace run: at a boundary vmwatch sends SIGINT (strace detaches from every
//! thread and writes its table), parses it, and attaches a new strace at
//! once. Syscalls made between the detach and the next attach are not
//! counted; docs/SOURCES.md gives the measured size of that gap.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::str::FromStr;

use syscalls::Sysno;
use vmwatch_core::features::{Columns, Feature};

use super::{Counter, Drain, Sample};
use crate::discover::procs::Process;
use crate::discover::stapsdt::UsdtBinary;
use crate::error::{Error, Result};

/// One strace per watched process.
pub struct StraceCounter {
    columns: Columns,
    dir: tempfile::TempDir,
    tracers: Vec<Tracer>,
}

struct Tracer {
    process: Process,
    child: Child,
    output: PathBuf,
}

impl StraceCounter {
    /// Counts the syscall columns of `columns` (the others stay zero).
    pub fn new(columns: Columns) -> Result<Self> {
        let status = Command::new("strace")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err(Error::Invalid(
                "--source strace needs the strace program (apt-get install strace)".into(),
            ));
        }
        Ok(Self {
            columns,
            dir: tempfile::Builder::new()
                .prefix("vmwatch-strace-")
                .tempdir()
                .map_err(|e| Error::io("creating a scratch directory for strace", e))?,
            tracers: Vec::new(),
        })
    }

    /// Attaches a strace to `process`.
    pub fn watch(&mut self, process: &Process) -> Result<()> {
        if self.tracers.iter().any(|t| t.process.pid == process.pid) {
            return Ok(());
        }
        let output = self.dir.path().join(format!("{}.txt", process.pid));
        let child = spawn(process.pid, &output)?;
        self.tracers.push(Tracer {
            process: process.clone(),
            child,
            output,
        });
        Ok(())
    }

    /// Ends every strace run, parses the summaries and starts the next runs.
    pub fn drain(&mut self) -> Result<Drain> {
        let mut out = Drain::default();
        let t0 = Instant::now();
        // Signal all first so the runs end at nearly the same moment.
        for t in &self.tracers {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
        }
        let mut keep = Vec::new();
        for mut t in std::mem::take(&mut self.tracers) {
            let _ = t.child.wait();
            let text = std::fs::read_to_string(&t.output).unwrap_or_default();
            if !t.process.is_alive() {
                out.exited.push(t.process);
                continue;
            }
            let mut counts = vec![0u64; self.columns.len()];
            for (name, calls) in parse_summary(&text) {
                let column = Sysno::from_str(&name)
                    .ok()
                    .and_then(|s| self.columns.position(&Feature::Syscall(s.id() as u32)));
                if let Some(i) = column {
                    counts[i] += calls;
                }
            }
            match spawn(t.process.pid, &t.output) {
                Ok(child) => t.child = child,
                Err(e) => {
                    tracing::warn!(
                        "strace on PID {}: {}",
                        t.process.pid,
                        vmwatch_core::error::chain(&e)
                    );
                    out.exited.push(t.process);
                    continue;
                }
            }
            out.samples.push(Sample {
                process: t.process.clone(),
                counts,
                sampled: Vec::new(),
                probe_hits: 0,
                probe_cpu_ns: 0.0,
                probe_dark_hits: 0,
                binary: Default::default(),
            });
            keep.push(t);
        }
        self.tracers = keep;
        // Upper bound of the blind gap: the first detach to the last attach.
        tracing::debug!("strace runs restarted; uncounted gap <= {:?}", t0.elapsed());
        Ok(out)
    }
}

impl Counter for StraceCounter {
    fn columns(&self) -> &Columns {
        &self.columns
    }

    fn watch(&mut self, process: &Process, _binary: Option<&UsdtBinary>) -> Result<()> {
        StraceCounter::watch(self, process)
    }

    fn watched(&self) -> Vec<&Process> {
        self.tracers.iter().map(|t| &t.process).collect()
    }

    fn unwatch(&mut self, pid: u32) {
        if let Some(i) = self.tracers.iter().position(|t| t.process.pid == pid) {
            let mut t = self.tracers.remove(i);
            // SIGINT makes strace detach cleanly from the traced process.
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
            let _ = t.child.wait();
        }
    }

    fn drain(&mut self) -> Result<Drain> {
        StraceCounter::drain(self)
    }
}

impl Drop for StraceCounter {
    fn drop(&mut self) {
        for t in &mut self.tracers {
            // SIGINT makes strace detach cleanly from the traced process.
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(t.child.id() as i32, libc::SIGINT) };
            let _ = t.child.wait();
        }
    }
}

/// Starts `strace -c -f -p PID` and waits until it has attached (it
/// reports nothing, so wait for the tracee's TracerPid).
fn spawn(pid: u32, output: &Path) -> Result<Child> {
    let _ = std::fs::remove_file(output);
    let child = Command::new("strace")
        .args(["-c", "-f", "-q", "-o"])
        .arg(output)
        .arg("-p")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("starting strace", e))?;
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if tracer_pid(pid) == Some(child.id()) {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Err(Error::Invalid(format!(
        "strace did not attach to PID {pid} within 5 s"
    )))
}

fn tracer_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// (syscall, calls) rows of a `strace -c` summary table.
pub fn parse_summary(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors,] syscall
            if cols.len() < 5 || cols[0].starts_with('-') || cols[0] == "%" {
                return None;
            }
            let name = *cols.last()?;
            if name == "total" {
                return None;
            }
            let calls = cols[3].parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_summary() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 62.50    0.000005           5      1000           getppid
 25.00    0.000002           1         3         1 read
 12.50    0.000001           1         2           write
------ ----------- ----------- --------- --------- ----------------
100.00    0.000008           2      1005         1 total
";
        assert_eq!(
            parse_summary(text),
            [
                ("getppid".to_string(), 1000),
                ("read".to_string(), 3),
                ("write".to_string(), 2)
            ]
        );
        assert!(parse_summary("").is_empty());
    }
}
