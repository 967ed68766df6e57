//! A counting session: the user's targets resolved to processes
//! ([`targets`]), the features counted ([`catalogue`]), a [`Counter`] kept in
//! step with the processes that come and go, and the window loop ([`run`])
//! that yields one sample per VM per window.

pub mod catalogue;
pub mod run;
pub mod targets;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use vmwatch_core::features::{Columns, Feature, Source};

pub use catalogue::{Backend, CountSource};
pub use run::{Ended, Window};
pub use targets::{resolve, Origin, Resolved, Target};

use crate::bpf::BpfObjects;
use crate::counter::bpf::{Collector, CollectorConfig};
use crate::counter::strace::StraceCounter;
use crate::counter::{BinaryFacts, Counter, Drain};
use crate::discover::procs::{self, Process, Skipped};
use crate::discover::stapsdt::{self, UsdtBinary};
use crate::error::{Error, Result};
use targets::{key, skip};

/// How a session is set up.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub targets: Vec<Target>,
    /// `--source`; empty = the sources of `features`, else QEMU probes.
    pub sources: Vec<CountSource>,
    /// Features to count (`--probes`); `None` = every feature of the
    /// sources (every `qemu` probe of the targets' binaries, every syscall).
    pub features: Option<Vec<String>>,
    /// Probes tracked for `seq:` transitions (`--track`); each transition
    /// among them is a column too.
    pub track: Vec<String>,
    /// Probes tracked without columns of their own: the tracked set a
    /// model's `seq:` features were learned with (its `tracked`).
    pub also_track: Vec<String>,
    pub max_vms: u32,
    /// Share of one CPU each VM's QEMU probe hits may cost (the cost
    /// governor; 0.01 = 1%); `None`: every probe counted exactly.
    pub budget: Option<f64>,
    /// What a probe hit costs; `None`: measured at start-up.
    pub hit_cost: Option<vmwatch_core::govern::HitCost>,
}

impl SessionConfig {
    /// Whether the session may start with nothing to watch and wait for
    /// VMs (a [`Target::Names`] target, as the agent has); its requested
    /// probes are then counted whether or not a binary seen so far has them.
    fn waits_for_vms(&self) -> bool {
        self.targets.iter().any(|t| matches!(t, Target::Names(_)))
    }
}

/// A running session.
pub struct Session<'obj> {
    counter: Box<dyn Counter + 'obj>,
    targets: Vec<Target>,
    binaries: HashMap<(u64, u64), Arc<UsdtBinary>>,
    /// What each executable means for rows, by device and inode.
    facts: HashMap<(u64, u64), Arc<BinaryFacts>>,
    /// Whether any QEMU probe or transition is counted (else no binary is
    /// attached).
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
        let (sources, backend) = catalogue::plan(
            &config.sources,
            config.features.as_deref(),
            !config.track.is_empty(),
        )?;
        let resolved = resolve(&config.targets)?;
        let mut rejected: HashSet<(u32, u64)> =
            resolved.untrusted.iter().map(|(p, _)| key(p)).collect();
        // A discovered candidate that cannot be counted is skipped while
        // others remain; if none remain, the first cause is the error.
        let mut first_skip: Option<Error> = None;
        let mut processes = Vec::new();
        let mut binaries = HashMap::new();
        for (p, origin) in resolved.processes {
            let probes = [Source::Qemu, Source::Seq, Source::Arg]
                .iter()
                .any(|s| sources.contains(s));
            if probes && !binaries.contains_key(&p.binary_id) {
                match UsdtBinary::of_process(&p) {
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
        let waits = config.waits_for_vms();
        if processes.is_empty() && !waits {
            // resolve() found at least one candidate, so one was skipped.
            return Err(first_skip.unwrap_or(Error::NoQemu {
                skipped: Skipped::default(),
            }));
        }
        let (available, kvm) = catalogue::available(&sources, &binaries)?;
        let columns = catalogue::choose(
            available,
            &catalogue::probe_names(&binaries),
            config.features.as_deref(),
            &sources,
            waits,
            &config.track,
        )?;
        let counts_qemu =
            columns.has(Source::Qemu) || columns.has(Source::Seq) || columns.has(Source::Arg);
        let counter: Box<dyn Counter + 'obj> = match backend {
            Backend::Strace => Box::new(StraceCounter::new(columns)?),
            Backend::Bpf => Box::new(Collector::new(
                objects,
                CollectorConfig {
                    columns,
                    tracked: config
                        .track
                        .iter()
                        .chain(&config.also_track)
                        .cloned()
                        .collect(),
                    max_vms: config.max_vms,
                    kvm,
                    budget: config.budget,
                    hit_cost: config.hit_cost,
                },
            )?),
        };
        let mut session = Self {
            counter,
            targets: config.targets,
            binaries,
            facts: HashMap::new(),
            counts_qemu,
            pending_joined: Vec::new(),
            rejected,
            since: (std::time::Instant::now(), std::time::SystemTime::now()),
        };
        for (p, origin) in &processes {
            let bin = session.binary(p);
            match session.counter.watch(p, bin.as_deref()) {
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
        if session.watched().is_empty() && !waits {
            return Err(first_skip.unwrap_or(Error::NoQemu {
                skipped: Skipped::default(),
            }));
        }
        // The first window starts once every target is attached.
        session.rebase()?;
        Ok(session)
    }

    /// The features counted, in row order.
    pub fn columns(&self) -> &Columns {
        self.counter.columns()
    }

    /// Column names (a dataset header's feature part).
    pub fn features(&self) -> &[String] {
        self.counter.columns().names()
    }

    /// Probe sites attached (0 when strace counts).
    pub fn attached_sites(&self) -> usize {
        self.counter.attached_sites()
    }

    /// Processes being counted.
    pub fn watched(&self) -> Vec<&Process> {
        self.counter.watched()
    }

    /// The binary of `p` when QEMU probes are counted.
    fn binary(&self, p: &Process) -> Option<Arc<UsdtBinary>> {
        self.binaries
            .get(&p.binary_id)
            .cloned()
            .filter(|_| self.counts_qemu)
    }

    /// Forgets counts so far: the first window starts now.
    pub fn rebase(&mut self) -> Result<()> {
        self.drain()?;
        self.since = (std::time::Instant::now(), std::time::SystemTime::now());
        Ok(())
    }

    /// Drains one window.
    pub fn drain(&mut self) -> Result<Drain> {
        let mut drain = self.counter.drain()?;
        for s in &mut drain.samples {
            s.binary = self.facts(&s.process);
        }
        Ok(drain)
    }

    /// What `p`'s executable is (its QEMU build) and which columns it
    /// cannot count (probes its binary lacks: they stay zero for it). The
    /// binary is read without being run, once per file.
    pub fn facts(&mut self, p: &Process) -> Arc<BinaryFacts> {
        if let Some(f) = self.facts.get(&p.binary_id) {
            return f.clone();
        }
        let facts = match self.binaries.get(&p.binary_id) {
            Some(b) => {
                let probes: HashSet<&str> =
                    b.provider_sites("qemu").map(|s| s.name.as_str()).collect();
                let lacking = self
                    .counter
                    .columns()
                    .iter()
                    .filter(|(_, f)| match f {
                        Feature::Probe(n) => !probes.contains(n.as_str()),
                        Feature::Seq { from, to } => {
                            !probes.contains(from.as_str()) || !probes.contains(to.as_str())
                        }
                        Feature::Arg(a) => !probes.contains(a.family().probe),
                        _ => false,
                    })
                    .map(|(i, _)| i)
                    .collect();
                BinaryFacts {
                    qemu: b.qemu.clone(),
                    lacking,
                }
            }
            // No QEMU probe is counted: nothing to lack, the build still
            // tells which QEMU the rows are of.
            None => BinaryFacts {
                qemu: stapsdt::build_of_file(&p.exe_path()),
                lacking: Vec::new(),
            },
        };
        let facts = Arc::new(facts);
        self.facts.insert(p.binary_id, facts.clone());
        facts
    }

    /// Stops watching `pid` for good: it does not join again while it runs.
    pub fn unwatch(&mut self, pid: u32) {
        let Some(p) = self.watched().into_iter().find(|p| p.pid == pid).cloned() else {
            return;
        };
        self.rejected.insert(key(&p));
        self.counter.unwatch(pid);
    }

    /// Watches processes that newly match a `--vm` or `--all` target.
    /// Returns the processes added (their first window is partial).
    pub fn refresh(&mut self) -> Vec<Process> {
        if !self.can_grow() {
            return Vec::new();
        }
        let scan = procs::scan();
        // Forget rejected processes that are gone (their PIDs get reused).
        self.rejected
            .retain(|k| scan.qemus.iter().any(|p| key(p) == *k));
        let mut added = Vec::new();
        for p in scan.qemus {
            if !targets::wanted(&self.targets, &p)
                || self.rejected.contains(&key(&p))
                || self.watched().iter().any(|w| w.pid == p.pid)
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
                match UsdtBinary::of_process(&p) {
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
            match self.counter.watch(&p, bin.as_deref()) {
                Ok(()) => added.push(p),
                Err(e) => skip(&p, &e),
            }
        }
        added
    }

    /// Whether new processes can still join (else an empty session is over).
    pub fn can_grow(&self) -> bool {
        targets::can_grow(&self.targets)
    }
}
