//! A counting session: resolves the user's targets to processes, decides
//! the feature columns, keeps the collector's watched set in step with the
//! processes that come and go, and yields one sample per VM per window.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::collector::{BpfObjects, Collector, CollectorConfig, Drain};
use crate::error::{shown, Error, Result};
use crate::features::{self, Source};
use crate::procs::{self, Process, Skipped, Untrusted};
use crate::stapsdt::UsdtBinary;
use crate::strace::StraceCounter;

/// Which processes to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A process by PID (any process with `qemu` USDT probes).
    Pid(u32),
    /// QEMU processes whose VM name (`-name`) matches; re-resolved every
    /// window, so a restarted VM is picked up again.
    Vm(String),
    /// Every QEMU process, including ones started later.
    All,
}

/// How a session is set up.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub targets: Vec<Target>,
    /// Sources to count; empty = those of `features`, else QEMU probes.
    pub sources: Vec<Source>,
    /// Features to count (`--probes`); `None` = every feature of the
    /// sources (every `qemu` probe of the targets' binaries, every syscall).
    pub features: Option<Vec<String>>,
    pub max_vms: u32,
}

/// A running session.
/// What counts: the BPF collector, or strace for the baseline.
enum Backend<'obj> {
    Bpf(Box<Collector<'obj>>),
    Strace(StraceCounter),
}

pub struct Session<'obj> {
    backend: Backend<'obj>,
    targets: Vec<Target>,
    binaries: HashMap<(u64, u64), Arc<UsdtBinary>>,
    /// Whether any QEMU probe is counted (else no binary is attached).
    counts_qemu: bool,
    /// Joined during the current window: their first sample is partial.
    pending_joined: Vec<Process>,
    /// Candidates of `--vm`/`--all` skipped for good (untrusted, or a
    /// binary without usable probes), by PID and start time: logged once.
    rejected: HashSet<(u32, u64)>,
    /// When counting (the first window) began.
    since: (std::time::Instant, std::time::SystemTime),
}

impl<'obj> Session<'obj> {
    /// Resolves the targets, loads and attaches the counters, and starts
    /// counting every target process.
    pub fn start(objects: &'obj mut BpfObjects, config: SessionConfig) -> Result<Self> {
        let sources = effective_sources(&config);
        let resolved = resolve(&config.targets)?;
        let mut rejected: HashSet<(u32, u64)> =
            resolved.untrusted.iter().map(|(p, _)| key(p)).collect();
        // A discovered candidate that cannot be counted is skipped while
        // others remain; if none remain, the first cause is the error.
        let mut first_skip: Option<Error> = None;
        let mut processes = Vec::new();
        let mut binaries = HashMap::new();
        let mut available: BTreeSet<String> = BTreeSet::new();
        for (p, origin) in resolved.processes {
            if sources.contains(&Source::Qemu) && !binaries.contains_key(&p.binary_id) {
                match read_binary(&p) {
                    Ok(b) => {
                        binaries.insert(p.binary_id, Arc::new(b));
                    }
                    Err(e) if origin == Origin::Discovered => {
                        skip(&p, &e);
                        rejected.insert(key(&p));
                        first_skip.get_or_insert(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            processes.push((p, origin));
        }
        if processes.is_empty() {
            // resolve() found at least one candidate, so one was skipped.
            return Err(first_skip.unwrap_or(Error::NoQemu {
                skipped: Skipped::default(),
            }));
        }
        if sources.contains(&Source::Qemu) {
            available.extend(binaries.values().flat_map(|b| {
                b.provider_sites("qemu")
                    .map(|s| features::qemu_feature(&s.name))
            }));
        }
        if sources.contains(&Source::Strace) && sources.len() > 1 {
            return Err(Error::Invalid(
                "--source strace is a comparison baseline and cannot be combined with other sources"
                    .into(),
            ));
        }
        let mut columns: Vec<String> = available.iter().cloned().collect();
        if sources.contains(&Source::Syscalls) || sources.contains(&Source::Strace) {
            for (name, _) in features::syscall_features() {
                if available.insert(name.clone()) {
                    columns.push(name);
                }
            }
        }
        let kvm = if sources.contains(&Source::Kvm) {
            let events = crate::kvm::discover()?;
            for name in events.features() {
                if available.insert(name.clone()) {
                    columns.push(name);
                }
            }
            Some(events)
        } else {
            None
        };
        let chosen = match config.features.as_deref() {
            None => columns,
            Some(wanted) => choose_features(&available, wanted, &sources)?,
        };
        let counts_qemu = chosen.iter().any(|f| f.starts_with(features::QEMU));
        let backend = if sources.contains(&Source::Strace) {
            Backend::Strace(StraceCounter::new(chosen)?)
        } else {
            Backend::Bpf(Box::new(Collector::new(
                objects,
                CollectorConfig {
                    features: chosen,
                    max_vms: config.max_vms,
                    kvm,
                },
            )?))
        };
        let mut session = Self {
            backend,
            targets: config.targets,
            binaries,
            counts_qemu,
            pending_joined: Vec::new(),
            rejected,
            since: (std::time::Instant::now(), std::time::SystemTime::now()),
        };
        for (p, origin) in &processes {
            let bin = session.binaries.get(&p.binary_id).cloned();
            let bin = bin.as_deref().filter(|_| session.counts_qemu);
            match session.watch(p, bin) {
                Ok(()) => {}
                // E.g. --max-vms is full: retried every window, like a
                // VM that starts later.
                Err(e) if *origin == Origin::Discovered => {
                    skip(p, &e);
                    first_skip.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if session.watched().next().is_none() {
            return Err(first_skip.unwrap_or(Error::NoQemu {
                skipped: Skipped::default(),
            }));
        }
        // The first window starts once every target is attached.
        session.rebase()?;
        Ok(session)
    }

    /// The BPF collector, unless strace counts.
    pub fn collector(&self) -> Option<&Collector<'obj>> {
        match &self.backend {
            Backend::Bpf(c) => Some(c),
            Backend::Strace(_) => None,
        }
    }

    pub fn features(&self) -> &[String] {
        match &self.backend {
            Backend::Bpf(c) => c.features(),
            Backend::Strace(s) => s.features(),
        }
    }

    /// Processes being counted.
    pub fn watched(&self) -> Box<dyn Iterator<Item = &Process> + '_> {
        match &self.backend {
            Backend::Bpf(c) => Box::new(c.watched()),
            Backend::Strace(s) => Box::new(s.watched()),
        }
    }

    fn watch(&mut self, p: &Process, bin: Option<&UsdtBinary>) -> Result<()> {
        match &mut self.backend {
            Backend::Bpf(c) => c.watch(p, bin),
            Backend::Strace(s) => s.watch(p),
        }
    }

    /// Forgets counts so far: the first window starts now.
    pub fn rebase(&mut self) -> Result<()> {
        self.drain()?;
        self.since = (std::time::Instant::now(), std::time::SystemTime::now());
        Ok(())
    }

    /// Drains one window.
    pub fn drain(&mut self) -> Result<Drain> {
        match &mut self.backend {
            Backend::Bpf(c) => c.drain(),
            Backend::Strace(s) => s.drain(),
        }
    }

    /// Watches processes that newly match a `--vm` or `--all` target.
    /// Returns the processes added (their first window is partial).
    pub fn refresh(&mut self) -> Vec<Process> {
        if !self
            .targets
            .iter()
            .any(|t| matches!(t, Target::Vm(_) | Target::All))
        {
            return Vec::new();
        }
        let scan = procs::scan();
        // Forget rejected processes that are gone (their PIDs get reused).
        self.rejected
            .retain(|k| scan.qemus.iter().any(|p| key(p) == *k));
        let mut added = Vec::new();
        for p in scan.qemus {
            let wanted = self.targets.iter().any(|t| match t {
                Target::All => true,
                Target::Vm(name) => *name == p.vm,
                Target::Pid(_) => false,
            });
            if !wanted || self.rejected.contains(&key(&p)) || self.watched().any(|w| w.pid == p.pid)
            {
                continue;
            }
            if let Err(why) = p.trust() {
                skip(&p, &why);
                self.rejected.insert(key(&p));
                continue;
            }
            let bin = if !self.counts_qemu {
                None
            } else if let Some(b) = self.binaries.get(&p.binary_id) {
                Some(b.clone())
            } else {
                match read_binary(&p) {
                    Ok(b) => {
                        let b = Arc::new(b);
                        self.binaries.insert(p.binary_id, b.clone());
                        Some(b)
                    }
                    Err(e) => {
                        skip(&p, &e);
                        self.rejected.insert(key(&p));
                        continue;
                    }
                }
            };
            match self.watch(&p, bin.as_deref()) {
                Ok(()) => added.push(p),
                Err(e) => skip(&p, &e),
            }
        }
        added
    }

    /// Whether new processes can still join (else an empty session is over).
    pub fn can_grow(&self) -> bool {
        self.targets
            .iter()
            .any(|t| matches!(t, Target::Vm(_) | Target::All))
    }
}

fn read_binary(p: &Process) -> Result<UsdtBinary> {
    let bin = UsdtBinary::read(&p.exe_path()).map_err(|e| match e {
        Error::NoProbes { .. } => Error::NoProbes {
            path: p.binary.clone(),
        },
        other => other,
    })?;
    if bin.provider_sites("qemu").next().is_none() {
        return Err(Error::NoProviderProbes {
            path: p.binary.clone(),
            provider: "qemu".into(),
        });
    }
    Ok(bin)
}

/// How a process came to be a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--pid`: the user's own choice, taken as given.
    Pid,
    /// Found by `--vm` or `--all`: only trusted QEMU processes.
    Discovered,
}

/// Targets resolved to live processes.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Processes to watch, in target order, each once.
    pub processes: Vec<(Process, Origin)>,
    /// Candidates of `--vm`/`--all` not taken for VMs (already logged).
    pub untrusted: Vec<(Process, Untrusted)>,
}

/// Resolves targets to live processes, failing on any that names nothing
/// usable. Processes found by name must pass [`Process::trust`]; the ones
/// that do not are skipped with a warning.
pub fn resolve(targets: &[Target]) -> Result<Resolved> {
    if targets.is_empty() {
        return Err(Error::Invalid(
            "no target given (use --pid, --vm or --all)".into(),
        ));
    }
    let mut out = Resolved::default();
    // Explicit PIDs first, so a process also found by name keeps --pid's rules.
    for t in targets {
        if let Target::Pid(pid) = t {
            let p = Process::from_pid(*pid)?;
            if !out.processes.iter().any(|(o, _)| o.pid == p.pid) {
                out.processes.push((p, Origin::Pid));
            }
        }
    }
    let mut scan: Option<procs::Scan> = None;
    for t in targets {
        let scan = match t {
            Target::Pid(_) => continue,
            _ => scan.get_or_insert_with(procs::scan),
        };
        let mut found = false;
        let mut skipped = Skipped {
            hidden: scan.hidden,
            ..Skipped::default()
        };
        for p in &scan.qemus {
            if let Target::Vm(name) = t {
                if p.vm != *name {
                    continue;
                }
            }
            if out.processes.iter().any(|(o, _)| o.pid == p.pid) {
                found = true;
                continue;
            }
            match p.trust() {
                Ok(()) => {
                    found = true;
                    out.processes.push((p.clone(), Origin::Discovered));
                }
                Err(why) => {
                    if !out.untrusted.iter().any(|(u, _)| u.pid == p.pid) {
                        out.untrusted.push((p.clone(), why.clone()));
                    }
                    skipped.untrusted.push((p.pid, why));
                }
            }
        }
        if !found {
            return Err(match t {
                Target::Vm(name) => Error::NoSuchVm {
                    name: name.clone(),
                    skipped,
                },
                _ => Error::NoQemu { skipped },
            });
        }
    }
    for (p, why) in &out.untrusted {
        skip(p, why);
    }
    Ok(out)
}

/// Logs why a candidate of `--vm`/`--all` is not watched.
fn skip(p: &Process, why: &dyn std::fmt::Display) {
    tracing::warn!("skipping QEMU PID {} (VM {}): {why}", p.pid, p.vm);
}

/// Tells a process apart from a later one with the same PID.
fn key(p: &Process) -> (u32, u64) {
    (p.pid, p.start_time)
}

/// Sources to count: the configured ones, else those the requested
/// features belong to, else QEMU probes.
fn effective_sources(config: &SessionConfig) -> Vec<Source> {
    if !config.sources.is_empty() {
        return config.sources.clone();
    }
    let mut from_features: Vec<Source> = config
        .features
        .iter()
        .flatten()
        .filter_map(|f| Source::of(f))
        .collect();
    from_features.sort();
    from_features.dedup();
    if from_features.is_empty() {
        vec![Source::Qemu]
    } else {
        from_features
    }
}

/// The requested features that exist, in the requested order.
fn choose_features(
    available: &BTreeSet<String>,
    wanted: &[String],
    sources: &[Source],
) -> Result<Vec<String>> {
    let (present, missing): (Vec<&String>, Vec<&String>) =
        wanted.iter().partition(|f| available.contains(*f));
    for f in &missing {
        match Source::of(f) {
            None => {
                return Err(Error::Invalid(format!(
                    "feature `{}` belongs to no source vmwatch collects (qemu:, sys:, kvm:)",
                    shown(f)
                )))
            }
            Some(s) if !sources.contains(&s) => {
                return Err(Error::Invalid(format!(
                    "feature `{}` needs --source {}",
                    shown(f),
                    s.name()
                )))
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        tracing::warn!(
            "{} requested feature(s) do not exist here and stay zero: {}",
            missing.len(),
            names.join(", ")
        );
    }
    if present.is_empty() {
        return Err(Error::Invalid(
            "none of the requested features exists for these targets".into(),
        ));
    }
    Ok(present.into_iter().cloned().collect())
}

/// Reads a `--probes` file.
pub fn read_probe_list(path: &Path) -> Result<Vec<String>> {
    features::read_feature_list(path)
}

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
        stop: &crate::signals::StopSignal,
        mut on_window: impl FnMut(&Window) -> Result<()>,
    ) -> Result<Ended> {
        use crate::signals::Wake;
        use crate::window::{unix_ms, WindowClock};
        use std::time::{Instant, SystemTime};

        let (mut start_mono, mut start_wall) = self.since;
        let mut clock = WindowClock::starting_at(start_mono, interval);
        let mut index = 0u64;
        loop {
            if let Wake::Stop(sig) = stop.wait_until(clock.deadline()) {
                return Ok(Ended::Signal(sig));
            }
            let now = Instant::now();
            let wall = SystemTime::now();
            let mut drain = self.drain()?;
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
            };
            self.pending_joined = joined;
            on_window(&window)?;
            index += 1;
            start_wall = wall;
            start_mono = now;
            if windows.is_some_and(|n| index >= n) {
                return Ok(Ended::Count);
            }
            if self.watched().next().is_none() && !self.can_grow() {
                return Ok(Ended::NoneLeft);
            }
        }
    }
}
