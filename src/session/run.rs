//! The window loop: drains on absolute deadlines (start + k × interval, so
//! windows do not drift however long a drain takes), drops the partial
//! first window of a process that joined, and hands each closed window over.

use std::cell::RefCell;
use std::time::{Instant, SystemTime};

use vmwatch_core::dataset::Row;
use vmwatch_core::window::{unix_ms, WindowClock};

use super::Session;
use crate::counter::Drain;
use crate::discover::procs::Process;
use crate::error::Result;
use crate::signals::{StopSignal, Wake};

/// How close to a window's end the governor's turns are left to the drain.
const GOVERNOR_SLACK: std::time::Duration = std::time::Duration::from_millis(5);

/// One closed window as the window loop hands it over.
#[derive(Debug)]
pub struct Window {
    /// Index since the session started counting (0-based).
    pub index: u64,
    pub start_unix_ms: u64,
    pub duration_ms: u64,
    /// Samples of processes watched for the whole window.
    pub drain: Drain,
    /// Processes that joined during the window (their partial counts were
    /// dropped; they report from the next window on).
    pub joined: Vec<Process>,
    /// Window boundaries the drain overran (merged into this window).
    pub missed: u32,
    /// How long draining the counters took.
    pub drain_time: std::time::Duration,
    /// Probe sites attached after the window (processes come and go).
    pub attached_sites: usize,
    /// Processes to stop watching once the window is handled.
    unwatch: RefCell<Vec<u32>>,
}

impl Window {
    /// The window's rows, one per sample, for a dataset file.
    pub fn rows<'a>(&'a self, label: &'a str) -> impl Iterator<Item = Row<'a>> + 'a {
        self.drain.samples.iter().map(move |s| Row {
            vm: &s.process.vm,
            pid: s.process.pid,
            label,
            window: self.index,
            start_unix_ms: self.start_unix_ms,
            duration_ms: self.duration_ms,
            qemu: Some(&s.binary.qemu).filter(|q| !q.is_unknown()),
            counts: &s.counts,
            sampled: &s.sampled,
        })
    }

    /// Asks the session to stop watching `pid` once this window is handled,
    /// for good (it does not join again while it runs).
    pub fn unwatch(&self, pid: u32) {
        self.unwatch.borrow_mut().push(pid);
    }
}

/// Why the window loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `--windows N` were written.
    Count,
    /// A stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT); the open window
    /// was discarded.
    Signal(i32),
    /// Every watched process exited and no target can add more.
    NoneLeft,
}

impl Session<'_> {
    /// Runs windows of `interval` on absolute deadlines until `windows`
    /// have closed, a stop signal arrives, or nothing is left to watch.
    pub fn run(
        &mut self,
        interval: std::time::Duration,
        windows: Option<u64>,
        stop: &StopSignal,
        mut on_window: impl FnMut(&Window) -> Result<()>,
    ) -> Result<Ended> {
        let (mut start_mono, mut start_wall) = self.since;
        let mut clock = WindowClock::starting_at(start_mono, interval);
        let mut index = 0u64;
        self.counter.set_interval(interval);
        loop {
            // Between drains, the cost governor's turns; one due just before
            // the window ends is left to the drain, which starts a phase.
            let deadline = clock.deadline();
            loop {
                let next = self
                    .counter
                    .wake_at()
                    .filter(|&t| t + GOVERNOR_SLACK < deadline);
                if let Wake::Stop(sig) = stop.wait_until(next.unwrap_or(deadline)) {
                    return Ok(Ended::Signal(sig));
                }
                let now = Instant::now();
                if next.is_none() || now >= deadline {
                    break;
                }
                self.counter.wake(now)?;
            }
            let now = Instant::now();
            let wall = SystemTime::now();
            let mut drain = self.drain()?;
            let drain_time = now.elapsed();
            // Processes that joined in this window have partial counts.
            let joined_pids: Vec<u32> = self.pending_joined.drain(..).map(|p| p.pid).collect();
            drain
                .samples
                .retain(|s| !joined_pids.contains(&s.process.pid));
            let joined = self.refresh();
            let missed = clock.advance(now);
            let window = Window {
                index,
                start_unix_ms: unix_ms(start_wall),
                duration_ms: now.duration_since(start_mono).as_millis() as u64,
                drain,
                joined: joined.clone(),
                missed,
                drain_time,
                attached_sites: self.attached_sites(),
                unwatch: RefCell::default(),
            };
            self.pending_joined = joined;
            on_window(&window)?;
            for pid in window.unwatch.take() {
                self.unwatch(pid);
            }
            index += 1;
            start_wall = wall;
            start_mono = now;
            if windows.is_some_and(|n| index >= n) {
                return Ok(Ended::Count);
            }
            if self.watched().is_empty() && !self.can_grow() {
                return Ok(Ended::NoneLeft);
            }
        }
    }
}
