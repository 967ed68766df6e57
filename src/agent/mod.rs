//! `vmwatch agent`: the host service. It watches every QEMU VM (trusted,
//! matching the configured name patterns, including VMs started later),
//! keeps per VM a lifecycle (learning → training → monitoring, again on
//! `ctl relearn`) whose state lives in the state directory keyed by the
//! VM's UUID, exports Prometheus metrics, writes JSON-lines events, and
//! answers `vmwatch ctl` on a local socket.

pub mod config;
pub mod ctl;
pub mod events;
pub mod metrics;
pub mod state;
pub mod trainer;
pub mod vm;

use std::collections::HashMap;

use vmwatch_core::dataset::Row;
use vmwatch_core::features::FeatureList;
use vmwatch_core::train::SvmParams;

use crate::bpf::BpfObjects;
use crate::discover::procs::Process;
use crate::error::{Error, Result};
use crate::session::targets::NameFilter;
use crate::session::{Ended, Session, SessionConfig, Target, Window};
use crate::signals::StopSignal;
use config::AgentConfig;
use ctl::{Request, Response, VmStatus};
use events::{Event, Events};
use metrics::{Metrics, VmWindow};
use state::{Phase, StateDir, VmKey};
use vm::{Learning, Vm};

/// A share of a CPU as a percentage with two significant digits or more
/// (`0.27%`, `0.0001%`).
fn percent(share: f64) -> String {
    let p = share * 100.0;
    let decimals = if p > 0.0 && p < 1.0 {
        (1.0 - p.log10().floor()) as usize
    } else {
        2
    };
    format!("{p:.decimals$}%")
}

/// The running agent between windows.
struct Agent {
    state: StateDir,
    how: Learning,
    /// Share of a CPU a VM's probes may cost (`None`: no budget).
    budget: Option<f64>,
    vms: HashMap<VmKey, Vm>,
    /// Watched processes and the VM each is.
    by_pid: HashMap<u32, VmKey>,
    metrics: Metrics,
    events: Events,
    ctl: ctl::Server,
    /// VMs only the state directory knows (not seen this run), read again
    /// when that can have changed.
    offline: Option<Vec<state::VmMeta>>,
}

/// What the VMs' models learn: the session's `columns` that `list` names
/// (in the columns' order; a feature this host cannot count is no column),
/// without the extra transitions its tracked set adds, and that set.
fn learned(columns: &[String], list: &FeatureList) -> FeatureList {
    let listed: std::collections::HashSet<&String> = list.features.iter().collect();
    FeatureList {
        features: columns
            .iter()
            .filter(|f| listed.contains(f))
            .cloned()
            .collect(),
        track: list.track.clone(),
    }
}

/// Runs the agent until a stop signal.
pub fn run(config: &AgentConfig, stop: &StopSignal) -> Result<Ended> {
    let state = StateDir::open(&config.state_dir)?;
    let ctl = ctl::Server::start(&state.socket())?;
    let metrics = Metrics::new();
    metrics.set_budget(config.budget);
    if let Some(addr) = config.metrics {
        metrics.serve(addr)?;
    }
    let events = Events::open(config.events.as_deref())?;
    let filter = NameFilter::new(&config.include, &config.exclude)?;
    let mut objects = BpfObjects::default();
    let mut session = Session::start(
        &mut objects,
        SessionConfig {
            targets: vec![Target::Names(filter)],
            sources: Vec::new(),
            features: Some(config.features.features.clone()),
            // Every transition among the list's tracked set is a column, so
            // the VMs' training files say what they tracked (Table::tracked).
            track: config.features.track.clone(),
            also_track: Vec::new(),
            max_vms: config.max_vms,
            budget: config.budget,
            hit_cost: config.hit_cost_ns.map(vmwatch_core::govern::HitCost::flat),
        },
    )?;
    tracing::info!(
        "agent: {} features from {}, learning {} windows of {:?} per VM, state in {}",
        session.features().len(),
        config.features_from,
        config.learn_windows,
        config.interval,
        state.root().display()
    );
    let mut agent = Agent {
        state,
        how: Learning {
            features: session.features().to_vec(),
            learn: learned(session.features(), &config.features),
            learn_windows: config.learn_windows,
            smoothing: config.smoothing,
            params: SvmParams::Search(config.grid),
            folds: config.folds,
            trainer: trainer::Trainer::start(trainer::Trainer::workers())
                .map_err(|e| Error::io("starting the training threads", e))?,
        },
        budget: config.budget,
        vms: HashMap::new(),
        by_pid: HashMap::new(),
        metrics,
        events,
        ctl,
        offline: None,
    };
    let first: Vec<Process> = session.watched().into_iter().cloned().collect();
    for p in &first {
        agent.join(p);
    }
    agent
        .metrics
        .attached_sites
        .set(session.attached_sites() as i64);
    agent.publish();
    let ended = session.run(config.interval, None, stop, |w| {
        agent.window(w);
        Ok(())
    })?;
    drop(session);
    Ok(ended)
}

impl Agent {
    /// A process to watch: the VM it is, resumed from the state directory.
    fn join(&mut self, p: &Process) {
        let key = VmKey::new(p.uuid.as_deref(), &p.vm);
        if let Some(vm) = self.vms.get(&key) {
            if let Some(other) = vm.pid.filter(|&o| o != p.pid) {
                tracing::warn!(
                    "VM {} (PID {}) has the identity of PID {other} ({key}); only the first is learned",
                    p.vm,
                    p.pid
                );
                return;
            }
        }
        if !self.vms.contains_key(&key) {
            match Vm::load(
                self.state.vm(&key),
                key.clone(),
                &p.vm,
                p.uuid.as_deref(),
                &self.how,
            ) {
                Ok(vm) => {
                    self.vms.insert(key.clone(), vm);
                }
                Err(e) => {
                    tracing::error!(
                        "VM {} (PID {}): {}",
                        p.vm,
                        p.pid,
                        vmwatch_core::error::chain(&e)
                    );
                    self.metrics.error("state");
                    return;
                }
            }
        }
        self.offline = None;
        let vm = self.vms.get_mut(&key).expect("inserted above");
        vm.pid = Some(p.pid);
        tracing::info!(
            "VM {} (PID {}, {key}): {}, {} windows learned",
            p.vm,
            p.pid,
            vm.phase().name(),
            vm.windows_learned
        );
        self.metrics.vm_seen(&p.vm, p.uuid.as_deref(), p.pid);
        self.metrics.vm_phase(&p.vm, vm.phase());
        self.by_pid.insert(p.pid, key);
    }

    fn window(&mut self, w: &Window) {
        self.metrics
            .drain_seconds
            .observe(w.drain_time.as_secs_f64());
        self.metrics.windows_late.inc_by(u64::from(w.missed));
        self.metrics.attached_sites.set(w.attached_sites as i64);
        for p in &w.drain.exited {
            if let Some(key) = self.by_pid.remove(&p.pid) {
                if let Some(vm) = self.vms.get_mut(&key) {
                    vm.pid = None;
                    tracing::info!("VM {} (PID {}) exited; its state is kept", p.vm, p.pid);
                }
            }
            self.metrics.vm_gone(&p.vm, p.uuid.as_deref(), p.pid);
        }
        let secs = (w.duration_ms.max(1)) as f64 / 1000.0;
        for s in &w.drain.samples {
            let Some(key) = self.by_pid.get(&s.process.pid) else {
                continue;
            };
            let vm = self.vms.get_mut(key).expect("watched VMs are known");
            let before = (vm.phase(), vm.anomalous);
            let row = Row {
                vm: &s.process.vm,
                pid: s.process.pid,
                label: "",
                window: w.index,
                start_unix_ms: w.start_unix_ms,
                duration_ms: w.duration_ms,
                qemu: Some(&s.binary.qemu).filter(|q| !q.is_unknown()),
                counts: &s.counts,
                sampled: &s.sampled,
            };
            let outcome = vm.window(&row, &s.binary, &self.how);
            self.metrics
                .state_write_errors
                .inc_by(vm.take_write_errors());
            // What was trapped, not the estimates of duty-cycled probes.
            let hits = s.probe_hits;
            let cost = s.probe_cpu_ns * 1e-9 / secs;
            vm.probe_cost_ratio = Some(cost);
            if let Some(budget) = self.budget {
                let over = cost > budget;
                if over != vm.over_budget {
                    if over {
                        tracing::warn!(
                            "VM {}: its probe hits cost {} of a CPU ({hits} in {secs:.1} s), \
                             above the budget of {} even with its hot probes duty-cycled \
                             (another tracer holds their semaphores, or they fire too fast \
                             for the smallest duty cycle)",
                            s.process.vm,
                            percent(cost),
                            percent(budget)
                        );
                    } else {
                        tracing::info!(
                            "VM {}: its probe hits cost {} of a CPU, within the budget again",
                            s.process.vm,
                            percent(cost)
                        );
                    }
                }
                vm.over_budget = over;
            }
            self.metrics.vm_window(&VmWindow {
                vm: &s.process.vm,
                verdict: outcome.verdict,
                score: outcome.score,
                anomalous: outcome.anomalous,
                probe_hits: hits,
                probe_cost_ratio: cost,
                over_budget: self.budget.map(|_| vm.over_budget),
            });
            let uuid = vm.meta.uuid.clone();
            let uuid = uuid.as_deref();
            self.events.emit(&Event::Window {
                start_unix_ms: w.start_unix_ms,
                vm: &s.process.vm,
                uuid,
                pid: s.process.pid,
                window: w.index,
                state: vm.phase().name(),
                score: outcome.score,
                anomalous: outcome.anomalous,
            });
            if let (Some(a), Some(score)) = (outcome.anomalous, outcome.score) {
                let was = before.1.unwrap_or(false);
                if a != was {
                    let name = |a: bool| if a { "anomalous" } else { "normal" };
                    self.events.emit(&Event::Verdict {
                        start_unix_ms: w.start_unix_ms,
                        vm: &s.process.vm,
                        uuid,
                        from: name(was),
                        to: name(a),
                        score,
                    });
                    tracing::info!("VM {} is {}", s.process.vm, name(a));
                }
            }
            let after = vm.phase();
            if after != before.0 {
                self.phase_changed(&s.process.vm, uuid.map(str::to_string), before.0, after, w);
            }
        }
        for p in &w.joined {
            self.join(p);
        }
        self.poll_training(w);
        let lost: u64 = self.vms.values_mut().map(Vm::take_write_errors).sum();
        self.metrics.state_write_errors.inc_by(lost);
        self.serve_ctl(w);
        self.publish();
        self.events.flush();
    }

    fn phase_changed(
        &mut self,
        vm: &str,
        uuid: Option<String>,
        from: Phase,
        to: Phase,
        w: &Window,
    ) {
        self.metrics.vm_phase(vm, to);
        self.events.emit(&Event::Phase {
            start_unix_ms: w.start_unix_ms,
            vm,
            uuid: uuid.as_deref(),
            from: from.name(),
            to: to.name(),
        });
    }

    /// Models that finished training.
    fn poll_training(&mut self, w: &Window) {
        let mut changed = Vec::new();
        for vm in self.vms.values_mut() {
            let before = vm.phase();
            if let Some(result) = vm.poll_training(&self.how) {
                if let Err(e) = result {
                    tracing::warn!("VM {}: {}", vm.meta.name, vmwatch_core::error::chain(&e));
                    self.metrics.error("training");
                }
                if vm.pid.is_some() && vm.phase() != before {
                    changed.push((
                        vm.meta.name.clone(),
                        vm.meta.uuid.clone(),
                        before,
                        vm.phase(),
                    ));
                }
            }
        }
        for (name, uuid, from, to) in changed {
            self.phase_changed(&name, uuid, from, to, w);
        }
    }

    /// Carries out `ctl relearn` and `ctl forget`.
    fn serve_ctl(&mut self, w: &Window) {
        while let Ok((request, reply)) = self.ctl.pending.try_recv() {
            let answer = match self.lifecycle_request(&request, w) {
                Ok(answer) => answer,
                Err(e) => Response::Error {
                    message: vmwatch_core::error::chain(&e),
                },
            };
            let _ = reply.send(answer);
        }
    }

    fn lifecycle_request(&mut self, request: &Request, w: &Window) -> Result<Response> {
        let name = match request {
            Request::Relearn { vm } | Request::Forget { vm } | Request::Export { vm } => vm,
            Request::Import { bundle } => {
                return self
                    .import(bundle)
                    .map(|message| Response::Done { message })
            }
            Request::Status => {
                return Ok(Response::Done {
                    message: String::new(),
                })
            }
        };
        let key = self.find(name)?;
        if let Request::Export { .. } = request {
            return Ok(Response::Bundle {
                bundle: Box::new(self.vms[&key].export()?),
            });
        }
        let vm = self.vms.get_mut(&key).expect("found above");
        let before = vm.phase();
        let message = match request {
            Request::Relearn { .. } => {
                vm.relearn(&self.how)?;
                format!(
                    "VM {}: learning {} more windows on top of {}, then retraining",
                    vm.meta.name, self.how.learn_windows, vm.windows_learned
                )
            }
            _ => {
                vm.forget(&self.how)?;
                self.offline = None;
                if vm.pid.is_none() {
                    let vm = self.vms.remove(&key).expect("found above");
                    let name = vm.meta.name.clone();
                    vm.remove()?;
                    return Ok(Response::Done {
                        message: format!("VM {name}: forgotten"),
                    });
                }
                format!("VM {}: forgotten; learning from scratch", vm.meta.name)
            }
        };
        if vm.pid.is_some() && vm.phase() != before {
            let (n, u, after) = (vm.meta.name.clone(), vm.meta.uuid.clone(), vm.phase());
            self.phase_changed(&n, u, before, after, w);
        }
        tracing::info!("{message}");
        Ok(Response::Done { message })
    }

    /// `ctl import`: the state another host exported; a VM of that identity
    /// running here already (the destination of a live migration) takes it
    /// at once.
    fn import(&mut self, bundle: &ctl::Bundle) -> Result<String> {
        if bundle.format != ctl::BUNDLE_FORMAT || bundle.version != 1 {
            return Err(Error::Invalid(format!(
                "not a vmwatch VM state of version 1 (format `{}`, version {})",
                bundle.format, bundle.version
            )));
        }
        let key = bundle.meta.key.clone();
        let dir = self.state.vm(&key);
        dir.import(bundle)?;
        self.offline = None;
        let pid = self.vms.get(&key).and_then(|v| v.pid);
        let mut vm = Vm::load(
            dir,
            key.clone(),
            &bundle.meta.name,
            bundle.meta.uuid.as_deref(),
            &self.how,
        )?;
        vm.pid = pid;
        let message = format!(
            "VM {}: imported ({}, {} windows learned)",
            bundle.meta.name,
            vm.phase().name(),
            vm.windows_learned
        );
        if pid.is_some() {
            self.metrics.vm_phase(&bundle.meta.name, vm.phase());
            self.vms.insert(key, vm);
        } else {
            self.vms.remove(&key);
        }
        tracing::info!("{message}");
        Ok(message)
    }

    /// The VM a `ctl` argument names: its name, UUID or state key; one the
    /// agent has not seen this run is loaded from the state directory.
    fn find(&mut self, name: &str) -> Result<VmKey> {
        let hit = |m: &state::VmMeta| {
            m.name == name || m.uuid.as_deref() == Some(name) || m.key.as_str() == name
        };
        if let Some(vm) = self.vms.values().find(|v| hit(&v.meta)) {
            return Ok(vm.meta.key.clone());
        }
        let meta = self
            .state
            .known()
            .into_iter()
            .find(|m| hit(m))
            .ok_or_else(|| Error::Invalid(format!("the agent knows no VM `{name}`")))?;
        let vm = Vm::load(
            self.state.vm(&meta.key),
            meta.key.clone(),
            &meta.name,
            meta.uuid.as_deref(),
            &self.how,
        )?;
        self.vms.insert(meta.key.clone(), vm);
        self.offline = None;
        Ok(meta.key)
    }

    /// What `ctl status` answers: every VM seen this run, and those only
    /// the state directory knows.
    fn publish(&mut self) {
        let mut out: Vec<VmStatus> = self
            .vms
            .values()
            .map(|vm| VmStatus {
                vm: vm.meta.name.clone(),
                uuid: vm.meta.uuid.clone(),
                pid: vm.pid,
                state: vm.phase().name().into(),
                windows_learned: vm.windows_learned,
                score: vm.score,
                anomalous: vm.anomalous,
                probe_cost_ratio: vm.probe_cost_ratio.filter(|_| vm.pid.is_some()),
            })
            .collect();
        let vms = &self.vms;
        let offline = self.offline.get_or_insert_with(|| {
            let known = self.state.known();
            known
                .into_iter()
                .filter(|m| !vms.contains_key(&m.key))
                .collect()
        });
        for m in offline.iter().cloned() {
            {
                out.push(VmStatus {
                    vm: m.name,
                    uuid: m.uuid,
                    pid: None,
                    state: m.phase.name().into(),
                    windows_learned: m.trained_on.unwrap_or(0),
                    score: None,
                    anomalous: None,
                    probe_cost_ratio: None,
                });
            }
        }
        out.sort_by(|a, b| a.vm.cmp(&b.vm));
        if let Ok(mut s) = self.ctl.snapshot.lock() {
            *s = Some(out);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentages_keep_two_significant_digits() {
        assert_eq!(super::percent(0.0027), "0.27%");
        assert_eq!(super::percent(0.00048), "0.048%");
        assert_eq!(super::percent(1e-6), "0.00010%");
        assert_eq!(super::percent(0.01), "1.00%");
        assert_eq!(super::percent(0.0), "0.00%");
    }

    #[test]
    fn models_learn_the_listed_columns_not_the_tracked_sets_extras() {
        let list = vmwatch_core::features::parse_feature_list(
            "f",
            "seq:a>b\nqemu:x\nsys:no_such_call\ntrack:a\ntrack:b\n",
        )
        .unwrap();
        // The session's columns: the list's (one this host cannot count
        // is none), then every transition of the tracked set.
        let columns: Vec<String> = ["seq:a>b", "qemu:x", "seq:a>a", "seq:b>a", "seq:b>b"]
            .map(String::from)
            .to_vec();
        let learned = super::learned(&columns, &list);
        assert_eq!(learned.features, ["seq:a>b", "qemu:x"]);
        assert_eq!(learned.track, ["a", "b"]);
    }
}
