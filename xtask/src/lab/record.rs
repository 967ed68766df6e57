//! A lab session (network, target server, VMs, client load, host-side tool,
//! torn down in reverse order on drop) and the recordings made with it:
//! `lab record`, `lab record-all` (with `MANIFEST.json`) and the CI smoke test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmwatch_core::arguments;
use vmwatch_core::dataset::Table;
use vmwatch_core::features;
use vmwatch_core::window::parse_interval;

use super::load::{self, LoadGen};
use super::net::{self, Net};
use super::phases::{self, Phases, Switch};
use super::scenario::{self, Group, Scenario};
use super::tools::{Repeater, TargetServer, TempDir};
use super::vm::{self, Accel, Vm};
use super::{lab_root, recipe, Guest};
use crate::qemu;
use crate::util::{self, note};

/// Every source vmwatch has (kvm rows are all zero under TCG).
pub const SOURCES: &str = "qemu,syscalls,kvm,perf,arg,seq";
/// The probes whose transitions `seq:` counts (every ordered pair, 9
/// columns): the guest's kick of a virtio queue and the two interrupt paths
/// (the local APIC's timer and the IO-APIC's device lines). Their order says
/// how the guest's work interleaves with its interrupts (a kick per timer
/// tick or a batch between ticks), where counts only say how much. They are
/// the probes the `seq:` features chosen on the previous dataset named
/// (docs/LAB.md), and cheap: the two interrupt probes fire at most about
/// 500 times a window each and the kick a few hundred under web, so
/// tracking them (tracked probes are never duty-cycled) stays within the
/// 0.5% budget. The virtqueue_pop/fill/flush path fires thousands of times
/// a window under network load, too many to track.
pub const TRACK: &str = "virtio_queue_notify,apic_local_deliver,ioapic_set_irq";
/// Seconds the client load and attacks run before recording starts.
pub const WARM_UP: Duration = Duration::from_secs(4);
/// How long a phased guest may take to switch its side of a scenario.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run a session.
#[derive(Debug, Clone)]
pub struct SessionOpts {
    pub scenario: &'static Scenario,
    pub vms: usize,
    pub seed: u64,
    /// Which `cargo xtask qemu` build the VMs run.
    pub qemu: qemu::Variant,
    pub accel: Accel,
    pub memory_mib: u32,
    pub boot_timeout: Duration,
    /// How long the client load and host-side tools may run at most.
    pub duration: Duration,
    pub kernel_args: Vec<String>,
    /// No network at all (`lab boot --no-net`): scenarios that need it fail.
    pub network: bool,
    /// Phased ([`phases`]): the `web` load all along, the scenario's own
    /// parts only once [`Session::set_phase`] switches them on.
    pub phased: bool,
}

/// A running lab. Fields drop in declaration order: client load and tools
/// first, then the VMs, then the network.
pub struct Session {
    loads: Vec<LoadGen>,
    tools: Vec<Repeater>,
    _target: Option<TargetServer>,
    vms: Vec<Vm>,
    net: Option<Net>,
    _logs: TempDir,
    pub qemu: qemu::Build,
    pub guest: Guest,
    pub boot_seconds: Vec<f64>,
}

impl Session {
    /// Builds what is missing, creates the network, boots the VMs, waits until
    /// each is ready and its web server answers over the lab network, and
    /// starts the scenario's host side.
    pub fn start(o: &SessionOpts) -> Result<Session> {
        vm::install_signal_handlers();
        let s = o.scenario;
        if o.phased && s.group == Group::Normal {
            bail!(
                "scenario {} is normal behaviour: it has no anomalous phase to switch on",
                s.name
            );
        }
        if o.phased && !o.network {
            bail!("a phased recording needs the lab network (its normal phases run the web load)");
        }
        if !o.network
            && (s.load.is_some()
                || s.host_target
                || !s.host_tool.is_empty()
                || s.name == "stress-net")
        {
            bail!("scenario {} needs the lab network", s.name);
        }
        let qemu = qemu::ensure(&qemu::Options {
            variant: o.qemu,
            ..qemu::Options::default()
        })
        .with_context(|| format!("building QEMU {} failed", o.qemu))?;
        vm::check_interrupted()?;
        let guest = super::ensure(false).context("building the lab guest failed")?;
        vm::check_interrupted()?;
        let runs = lab_root()?.join("runs");
        util::remove_orphans(&runs, |name| util::owner_pid(name, "host-"));
        let logs = TempDir::create(runs.join(format!("host-{}-{}", std::process::id(), unique())))?;

        let net = if o.network {
            Some(Net::create(o.vms)?)
        } else {
            None
        };
        let target = match (&net, s.host_target) {
            (Some(n), true) => Some(TargetServer::start(
                n,
                logs.0.join("target"),
                recipe::ADMIN_USER,
                recipe::ADMIN_PASSWORD,
            )?),
            _ => None,
        };
        let mut session = Session {
            loads: Vec::new(),
            tools: Vec::new(),
            _target: target,
            vms: Vec::new(),
            net,
            _logs: logs,
            qemu,
            guest,
            boot_seconds: Vec::new(),
        };
        for i in 0..o.vms {
            let cfg = vm::VmConfig {
                name: if o.vms == 1 {
                    format!("lab-{}", s.name)
                } else {
                    format!("lab-{}-{i}", s.name)
                },
                qemu: session.qemu.binary.clone(),
                kernel: session.guest.kernel.clone(),
                initrd: session.guest.initrd.clone(),
                disk: Some(session.guest.disk.clone()),
                scenario: s.name.to_string(),
                accel: o.accel,
                memory_mib: o.memory_mib,
                cpus: 1,
                tap: session.net.as_ref().map(|_| vm::Tap {
                    ifname: net::tap_name(i),
                    mac: net::vm_mac(i),
                }),
                netns: session.net.as_ref().map(Net::path),
                ip: session
                    .net
                    .as_ref()
                    .map(|_| format!("{}/{}", net::vm_ip(i), net::PREFIX)),
                gateway: session.net.as_ref().map(|_| net::HOST_IP.to_string()),
                run_parent: runs.clone(),
                extra_append: o
                    .kernel_args
                    .iter()
                    .cloned()
                    .chain(o.phased.then(|| "vmwatch.phased=1".to_string()))
                    .collect(),
            };
            note(format!(
                "booting VM `{}` ({}, {} MiB, scenario {}{})",
                cfg.name,
                o.accel.as_str(),
                o.memory_mib,
                s.name,
                cfg.ip
                    .as_ref()
                    .map(|ip| format!(", {ip}"))
                    .unwrap_or_default()
            ));
            session.vms.push(Vm::boot(&cfg)?);
        }
        for vm in &mut session.vms {
            let took = vm.wait_ready(o.boot_timeout)?;
            note(format!(
                "VM `{}` ready: QEMU pid {}, boot-to-ready {:.1}s",
                vm.name(),
                vm.pid(),
                took.as_secs_f64()
            ));
            session.boot_seconds.push(took.as_secs_f64());
        }
        if let Some(n) = &session.net {
            for i in 0..o.vms {
                let took = load::wait_http(n, &net::vm_ip(i), Duration::from_secs(30))?;
                note(format!(
                    "http://{}/ answers over the lab network ({:.1}s)",
                    net::vm_ip(i),
                    took.as_secs_f64()
                ));
            }
            // Phased: every boot's normal phases run the same load.
            let load = if o.phased {
                Some(load::Profile::Web)
            } else {
                s.load
            };
            if let Some(profile) = load {
                for i in 0..o.vms {
                    let seed = o.seed.wrapping_add(i as u64);
                    session.loads.push(LoadGen::start(
                        n,
                        &net::vm_ip(i),
                        profile,
                        seed,
                        o.duration,
                    )?);
                }
            }
        }
        if !s.host_tool.is_empty() && !o.phased {
            session.start_host_tool(s, o.duration)?;
        }
        Ok(session)
    }

    /// Switches the anomalous phase of phased scenario `s` on (its
    /// host-side tool started for at most `duration`, its guest side
    /// started in every VM) or off (both stopped); returns when every VM
    /// has done so.
    pub fn set_phase(&mut self, s: &Scenario, on: bool, duration: Duration) -> Result<Switch> {
        let asked_ms = util::unix_ms();
        if on {
            if !s.host_tool.is_empty() {
                self.start_host_tool(s, duration)?;
            }
        } else {
            self.stop_host_tools();
        }
        for vm in &mut self.vms {
            vm.phase(on, PHASE_TIMEOUT)?;
        }
        Ok(Switch {
            on,
            asked_ms,
            done_ms: util::unix_ms(),
        })
    }

    /// Starts the host-side tool of scenario `s` (e.g. an attack) against every
    /// VM of the session, on top of whatever already runs: the VMs keep their
    /// own scenario and the client load goes on. The tool is repeated until
    /// [`Session::stop_host_tools`], `duration`, or the end of the session.
    pub fn start_host_tool(&mut self, s: &Scenario, duration: Duration) -> Result<()> {
        if s.host_tool.is_empty() {
            bail!(
                "scenario {} has no host-side tool (its guest side runs in the VM)",
                s.name
            );
        }
        let Some(n) = &self.net else {
            bail!("scenario {} needs the lab network", s.name);
        };
        let batch = unique();
        for i in 0..self.vms.len() {
            let log = self._logs.0.join(format!("tool-{batch}-{i}.log"));
            self.tools.push(Repeater::start(
                n,
                s.host_argv(&net::vm_ip(i)),
                log,
                duration,
            )?);
        }
        Ok(())
    }

    /// Stops every host-side tool running (the scenario's own and those of
    /// [`Session::start_host_tool`]); returns each one's command line and how
    /// many times it was started.
    pub fn stop_host_tools(&mut self) -> Vec<(String, u64)> {
        self.tools
            .drain(..)
            .map(|t| {
                let what = t.what().to_string();
                (what, t.stop())
            })
            .collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.vms.iter().map(Vm::pid).collect()
    }

    pub fn vms_mut(&mut self) -> &mut [Vm] {
        &mut self.vms
    }

    pub fn net_name(&self) -> Option<&str> {
        self.net.as_ref().map(Net::name)
    }

    /// Fails if a VM has exited.
    pub fn check(&mut self) -> Result<()> {
        for vm in &mut self.vms {
            vm.check_running()?;
        }
        Ok(())
    }

    /// Lets the session run for `d`; fails if a VM exits or on Ctrl-C.
    pub fn hold(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        loop {
            self.check()?;
            vm::check_interrupted()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    /// Stops everything in order; reports the client load and returns its
    /// summary per VM.
    pub fn finish(mut self) -> Result<Vec<load::Summary>> {
        let mut loads = Vec::new();
        for l in self.loads.drain(..) {
            let (summary, err) = l.stop();
            note(format!("web load: {summary}"));
            if let Some(e) = err {
                note(format!("web load error: {e}"));
            }
            loads.push(summary);
        }
        for (what, runs) in self.stop_host_tools() {
            note(format!("host tool `{what}`: started {runs} time(s)"));
        }
        for vm in self.vms.drain(..) {
            let pid = vm.pid();
            let status = vm.shutdown()?;
            note(format!("QEMU (pid {pid}) stopped ({status})"));
        }
        Ok(loads)
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// How the VMs of a recording run and are recorded (`lab record` and
/// `lab record-all` alike).
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Windows per scenario.
    pub windows: u32,
    /// vmwatch's `--interval`, as given.
    pub interval: String,
    pub vms: usize,
    /// Which `cargo xtask qemu` build the VMs run.
    pub qemu: qemu::Variant,
    /// vmwatch's `--budget`, as given.
    pub budget: String,
    /// Phased recordings ([`phases`]); `None`: the scenario all along.
    pub phases: Option<Phases>,
    pub accel: Accel,
    pub memory_mib: u32,
    /// The vmwatch binary; `None`: build it (`cargo build --release -p vmwatch`).
    pub vmwatch: Option<PathBuf>,
}

/// Options of one recording.
#[derive(Debug, Clone)]
pub struct RecordOpts {
    pub scenario: &'static Scenario,
    pub run: RunOpts,
    pub seed: u64,
    pub output: PathBuf,
    pub force: bool,
}

/// What a recording produced (checked).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub rows: usize,
    pub pids: Vec<u32>,
    pub seconds: f64,
    pub boot_seconds: Vec<f64>,
    /// Mean per window of the sum of all `qemu:*` columns.
    pub qemu_hits_per_window: f64,
    pub features: usize,
    /// Phased: the switches as they happened, and the windows per label.
    pub switches: Vec<Switch>,
    pub labels: Vec<(String, usize)>,
    /// The client load's summary per VM (none without a load).
    pub loads: Vec<load::Summary>,
}

/// Builds (or takes) the vmwatch binary.
pub fn vmwatch_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("the vmwatch binary {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let root = util::repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    util::run(
        Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "-p", "vmwatch"]),
    )
    .context("building vmwatch failed")?;
    Ok(root.join("target/release/vmwatch"))
}

/// A command running `vmwatch`, which gets SIGTERM (it detaches and exits
/// cleanly) if xtask dies.
pub fn vmwatch_command(vmwatch: &Path) -> Command {
    let mut cmd = Command::new(vmwatch);
    util::die_with_parent(&mut cmd, libc::SIGTERM);
    cmd
}

/// Waits for a vmwatch process that watches `session`'s VMs. If a VM exits,
/// on Ctrl-C, or if it runs longer than `limit`, stops it (SIGINT: vmwatch
/// writes what it has and exits) and fails.
pub fn wait_vmwatch(
    session: &mut Session,
    child: &mut Child,
    limit: Duration,
) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().context("could not wait for vmwatch")? {
            // Ctrl-C reaches vmwatch too, which then exits with status 0.
            vm::check_interrupted()?;
            return Ok(st);
        }
        let problem = if vm::interrupted() {
            Some("interrupted".to_string())
        } else if Instant::now() > deadline {
            Some(format!(
                "vmwatch did not finish within {}s",
                limit.as_secs()
            ))
        } else {
            session.check().err().map(|e| format!("{e:#}"))
        };
        if let Some(p) = problem {
            stop_vmwatch(child);
            bail!("{p}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a vmwatch child with SIGINT (it detaches and exits cleanly) and reaps it.
pub fn stop_vmwatch(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: SIGINT to our own, not yet reaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
    }
    let _ = child.wait();
}

/// Follows the switches of `plan` (offsets from now) while vmwatch records,
/// until vmwatch exits or `limit` has passed; returns them as they happened.
/// On an error, vmwatch is stopped.
fn run_phases(
    session: &mut Session,
    child: &mut Child,
    s: &Scenario,
    plan: &[(Duration, bool)],
    limit: Duration,
) -> Result<Vec<Switch>> {
    let start = Instant::now();
    let mut done = Vec::with_capacity(plan.len());
    for &(at, on) in plan {
        loop {
            let problem = if vm::interrupted() {
                Some("interrupted".to_string())
            } else {
                session.check().err().map(|e| format!("{e:#}"))
            };
            if let Some(p) = problem {
                stop_vmwatch(child);
                bail!("{p}");
            }
            if child.try_wait().ok().flatten().is_some() {
                return Ok(done);
            }
            let left = (start + at).saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        let rest = limit.saturating_sub(start.elapsed()) + Duration::from_secs(30);
        match session.set_phase(s, on, rest) {
            Ok(sw) => done.push(sw),
            Err(e) => {
                stop_vmwatch(child);
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// `lab record`: one scenario, `windows` windows, checked output.
pub fn record(o: &RecordOpts) -> Result<Recorded> {
    let run = &o.run;
    // What vmwatch's `--interval` takes, checked before anything boots.
    let interval = parse_interval(&run.interval).map_err(|e| anyhow!("--interval: {e}"))?;
    if o.output.exists() && !o.force {
        bail!("{} exists; pass --force to replace it", o.output.display());
    }
    if let Some(dir) = o.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    let vmwatch = vmwatch_binary(run.vmwatch.as_deref())?;
    let record_time = interval * run.windows;
    let started = Instant::now();
    let mut session = Session::start(&SessionOpts {
        scenario: o.scenario,
        vms: run.vms,
        seed: o.seed,
        qemu: run.qemu,
        accel: run.accel,
        memory_mib: run.memory_mib,
        boot_timeout: Duration::from_secs(180),
        duration: WARM_UP + record_time + Duration::from_secs(120),
        kernel_args: Vec::new(),
        network: true,
        phased: run.phases.is_some(),
    })?;
    let pids = session.pids();
    let boot_seconds = session.boot_seconds.clone();
    note(format!("warming up for {}s", WARM_UP.as_secs()));
    session.hold(WARM_UP)?;

    let mut cmd = vmwatch_command(&vmwatch);
    cmd.arg("record");
    for pid in &pids {
        cmd.args(["--pid", &pid.to_string()]);
    }
    cmd.args(["--source", SOURCES, "--track", TRACK])
        .args(["--label", o.scenario.name])
        .args(["--budget", &run.budget])
        .args(["--interval", &run.interval])
        .args(["--windows", &run.windows.to_string()])
        .arg("-o")
        .arg(&o.output)
        .arg("--force")
        .stdin(Stdio::null())
        .stdout(std::io::stderr());
    note(format!("$ {}", util::display(&cmd)));
    let mut child = cmd.spawn().context("could not start vmwatch")?;
    let switches = match &run.phases {
        Some(p) => {
            let plan = p.switches(record_time, o.seed);
            note(format!(
                "phases: {} switches of {} over {}s (normal about {}s, anomalous about {}s)",
                plan.len(),
                o.scenario.name,
                record_time.as_secs(),
                p.normal.as_secs(),
                p.anomaly.as_secs()
            ));
            run_phases(&mut session, &mut child, o.scenario, &plan, record_time)
                .with_context(|| format!("recording {} failed", o.scenario.name))?
        }
        None => Vec::new(),
    };
    let status = wait_vmwatch(
        &mut session,
        &mut child,
        record_time + Duration::from_secs(120),
    )
    .with_context(|| format!("recording {} failed", o.scenario.name))?;
    if !status.success() {
        bail!("vmwatch record failed ({status})");
    }
    let loads = session.finish()?;
    let labels = if run.phases.is_some() {
        let settle = interval.as_millis() as u64;
        let labels = phases::relabel(&o.output, &switches, settle, o.scenario.name)?;
        let said: Vec<String> = labels.iter().map(|(l, n)| format!("{n} {l}")).collect();
        note(format!("windows by phase: {}", said.join(", ")));
        labels
    } else {
        Vec::new()
    };
    let allowed: Vec<&str> = if run.phases.is_some() {
        vec![phases::NORMAL_LABEL, o.scenario.name, phases::SWITCH_LABEL]
    } else {
        vec![o.scenario.name]
    };
    let mut rec = check_dataset(&o.output, &pids, &allowed, run.windows as usize)?;
    rec.switches = switches;
    rec.labels = labels;
    rec.loads = loads;
    rec.seconds = started.elapsed().as_secs_f64();
    rec.boot_seconds = boot_seconds;
    note(format!(
        "{}: {} rows, {} features, {:.0} qemu probe hits per window, {}",
        o.output.display(),
        rec.rows,
        rec.features,
        rec.qemu_hits_per_window,
        util::human_duration(Duration::from_secs_f64(rec.seconds))
    ));
    Ok(rec)
}

/// Checks a recording: `windows` rows per VM, every row from one of `pids`,
/// labelled one of `labels`, with QEMU probes counted in every row. The file is read
/// as vmwatch reads datasets (quoted fields, gzip, leading columns checked).
pub fn check_dataset(
    path: &Path,
    pids: &[u32],
    labels: &[&str],
    windows: usize,
) -> Result<Recorded> {
    let table = Table::read(path)?;
    let qemu_cols: Vec<usize> = (0..table.features.len())
        .filter(|&j| table.features[j].starts_with(features::QEMU))
        .collect();
    let mut total = 0.0;
    for (n, key) in table.keys.iter().enumerate() {
        if !pids.contains(&key.pid) {
            bail!(
                "{} row {}: pid {} is not a VM of this run ({pids:?})",
                path.display(),
                n + 1,
                key.pid
            );
        }
        if !labels.contains(&key.label.as_str()) {
            bail!(
                "{} row {}: label {:?}, expected one of {labels:?}",
                path.display(),
                n + 1,
                key.label
            );
        }
        let hits: f64 = qemu_cols.iter().map(|&j| table.x[[n, j]]).sum();
        if hits <= 0.0 {
            bail!(
                "{} row {}: no QEMU probe was counted",
                path.display(),
                n + 1
            );
        }
        total += hits;
    }
    let expected = windows * pids.len();
    if table.len() != expected {
        bail!(
            "{} has {} rows, expected {expected} ({windows} windows x {} VMs)",
            path.display(),
            table.len(),
            pids.len()
        );
    }
    Ok(Recorded {
        rows: table.len(),
        pids: pids.to_vec(),
        seconds: 0.0,
        boot_seconds: Vec::new(),
        qemu_hits_per_window: total / table.len().max(1) as f64,
        features: table.features.len(),
        switches: Vec::new(),
        labels: Vec::new(),
        loads: Vec::new(),
    })
}

/// Options of `lab record-all`.
#[derive(Debug, Clone)]
pub struct RecordAllOpts {
    pub run: RunOpts,
    pub seed: u64,
    pub out_dir: PathBuf,
    pub only: Vec<String>,
    /// Boots per scenario, each with its own seed.
    pub boots: u32,
}

/// `lab record-all`: every scenario into `<out>/<scenario>.csv.gz`, a summary,
/// and `<out>/MANIFEST.json`.
pub fn record_all(o: &RecordAllOpts) -> Result<()> {
    let list: Vec<&'static Scenario> = if o.only.is_empty() {
        scenario::SCENARIOS.iter().collect()
    } else {
        o.only
            .iter()
            .map(|n| scenario::find(n))
            .collect::<Result<_>>()?
    };
    fs::create_dir_all(&o.out_dir)
        .with_context(|| format!("could not create {}", o.out_dir.display()))?;
    let vmwatch = vmwatch_binary(o.run.vmwatch.as_deref())?;
    let started = Instant::now();
    let date = util::utc_now();
    let mut results: Vec<(&'static Scenario, u64, PathBuf, Result<Recorded>)> = Vec::new();
    let boots = o.boots.clamp(1, 999);
    let runs: Vec<(usize, &'static Scenario, u32)> = list
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..boots).map(move |k| (i, *s, k)))
        .collect();
    for (n, &(i, s, k)) in runs.iter().enumerate() {
        let seed = o.seed.wrapping_add(1000 * i as u64 + u64::from(k));
        let file = if boots == 1 {
            o.out_dir.join(format!("{}.csv.gz", s.name))
        } else {
            o.out_dir.join(format!("{}-{}.csv.gz", s.name, k + 1))
        };
        note(format!(
            "[{}/{}] {}{} ({} windows, seed {seed}); {} so far",
            n + 1,
            runs.len(),
            s.name,
            if boots == 1 {
                String::new()
            } else {
                format!(", boot {}/{boots}", k + 1)
            },
            o.run.windows,
            util::human_duration(started.elapsed())
        ));
        let r = record(&RecordOpts {
            scenario: s,
            run: RunOpts {
                vmwatch: Some(vmwatch.clone()),
                // Normal scenarios have no anomaly to switch: whole boots.
                phases: o.run.phases.filter(|_| s.group != Group::Normal),
                ..o.run.clone()
            },
            seed,
            output: file.clone(),
            force: true,
        });
        if let Err(e) = &r {
            note(format!("{} failed: {e:#}", s.name));
        }
        results.push((s, seed, file, r));
        if vm::interrupted() {
            break;
        }
    }
    eprintln!();
    eprintln!(
        "{:<20} {:>6} {:>9} {:>14} {:>17} {:>9}",
        "scenario", "rows", "features", "qemu hits/win", "asked/served /s", "time"
    );
    for (s, _, file, r) in &results {
        let name = file
            .file_name()
            .map(|f| f.to_string_lossy().trim_end_matches(".csv.gz").to_string())
            .unwrap_or_else(|| s.name.to_string());
        match r {
            Ok(r) => eprintln!(
                "{:<20} {:>6} {:>9} {:>14.0} {:>17} {:>9}",
                name,
                r.rows,
                r.features,
                r.qemu_hits_per_window,
                served(&r.loads),
                util::human_duration(Duration::from_secs_f64(r.seconds))
            ),
            Err(e) => eprintln!("{:<20} FAILED: {}", name, first_line(&format!("{e:#}"))),
        }
    }
    let manifest = manifest_json(o, &vmwatch, &date, started.elapsed(), &results)?;
    let path = o.out_dir.join("MANIFEST.json");
    util::write_atomic(&path, manifest.as_bytes())?;
    note(format!(
        "wrote {} ({} scenarios in {})",
        path.display(),
        results.len(),
        util::human_duration(started.elapsed())
    ));
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.3.is_err())
        .map(|r| r.0.name)
        .collect();
    vm::check_interrupted()?;
    if !failed.is_empty() {
        bail!("{} scenario(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// What the manifest says about the sources under the accelerator used.
fn sources_note(accel: Accel) -> &'static str {
    match accel {
        Accel::Tcg => {
            "TCG: the guest runs no KVM code, so every kvm:* column is zero; \
             TCG-only probes (exec_tb and kin) count guest execution instead"
        }
        Accel::Kvm => "KVM: kvm:* columns count the VM's KVM tracepoints and exit reasons",
    }
}

/// Requests per second the client load asked for and the guest served,
/// summed over the VMs; `None` without a load.
fn asked_served(loads: &[load::Summary]) -> Option<(f64, f64)> {
    let secs = loads.iter().map(|l| l.seconds).fold(0.0, f64::max);
    if loads.is_empty() || secs <= 0.0 {
        return None;
    }
    let asked: u64 = loads.iter().map(|l| l.sent + l.skipped).sum();
    let ok: u64 = loads.iter().map(|l| l.ok).sum();
    Some((asked as f64 / secs, ok as f64 / secs))
}

/// `asked/served` requests per second of the client load, `-` without one.
fn served(loads: &[load::Summary]) -> String {
    asked_served(loads).map_or("-".into(), |(a, s)| format!("{a:.1}/{s:.1}"))
}

/// The client load's rates ([`asked_served`]), failures, skips and mean
/// latency; `null` without a load.
fn load_json(loads: &[load::Summary]) -> String {
    let Some((asked, served)) = asked_served(loads) else {
        return "null".into();
    };
    let sum = |f: fn(&load::Summary) -> u64| loads.iter().map(f).sum::<u64>();
    let done = sum(|l| l.ok + l.failed).max(1) as f64;
    let latency: f64 = loads
        .iter()
        .map(|l| l.mean_latency_ms * (l.ok + l.failed) as f64)
        .sum::<f64>()
        / done;
    format!(
        "{{\"requested_per_s\": {asked:.2}, \"served_per_s\": {served:.2}, \"failed\": {}, \"skipped\": {}, \"mean_latency_ms\": {latency:.0}}}",
        sum(|l| l.failed),
        sum(|l| l.skipped),
    )
}

/// `{"web": 40, "switch": 6}`: windows per label (empty for a whole boot).
fn labels_json(labels: &[(String, usize)]) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(l, n)| format!("{}: {n}", util::json_str(l)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// `[[true, asked_ms, done_ms], ...]`: the switches of a phased recording.
fn switches_json(switches: &[Switch]) -> String {
    let inner: Vec<String> = switches
        .iter()
        .map(|s| format!("[{}, {}, {}]", s.on, s.asked_ms, s.done_ms))
        .collect();
    format!("[{}]", inner.join(", "))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn manifest_json(
    o: &RecordAllOpts,
    vmwatch: &Path,
    date: &str,
    elapsed: Duration,
    results: &[(&'static Scenario, u64, PathBuf, Result<Recorded>)],
) -> Result<String> {
    use util::json_str as j;
    let qemu = qemu::ensure(&qemu::Options {
        variant: o.run.qemu,
        ..qemu::Options::default()
    })?;
    let guest = super::ensure(false)?;
    let read = |p: PathBuf| -> Result<String> {
        Ok(fs::read_to_string(&p)
            .with_context(|| format!("could not read {}", p.display()))?
            .trim()
            .to_string())
    };
    let qemu_info = read(qemu.dir.join("BUILD-INFO.json"))?;
    let guest_info = read(guest.dir.join(super::MANIFEST))?;
    let vmwatch_version = util::output(Command::new(vmwatch).arg("--version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e:#})"));
    let git = util::output(
        Command::new("git")
            .current_dir(util::repo_root())
            .args(["describe", "--always", "--dirty"]),
    )
    .map(|v| v.trim().to_string())
    .unwrap_or_default();
    let command: Vec<String> = std::env::args().collect();
    let scenarios: Vec<String> = results
        .iter()
        .map(|(s, seed, file, r)| {
            let file = file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            match r {
                Ok(r) => format!(
                    "    {{\"name\": {}, \"group\": {}, \"file\": {}, \"seed\": {seed}, \"rows\": {}, \"features\": {}, \"qemu_hits_per_window\": {:.1}, \"boot_seconds\": {:.1}, \"seconds\": {:.1}, \"host_tool\": {}, \"guest\": {}, \"load\": {}, \"labels\": {}, \"switches\": {}}}",
                    j(s.name),
                    j(s.group.as_str()),
                    j(&file),
                    r.rows,
                    r.features,
                    r.qemu_hits_per_window,
                    r.boot_seconds.first().copied().unwrap_or(0.0),
                    r.seconds,
                    j(&s.host_tool.join(" ")),
                    j(s.guest),
                    load_json(&r.loads),
                    labels_json(&r.labels),
                    switches_json(&r.switches)
                ),
                Err(e) => format!(
                    "    {{\"name\": {}, \"file\": null, \"seed\": {seed}, \"error\": {}}}",
                    j(s.name),
                    j(&format!("{e:#}"))
                ),
            }
        })
        .collect();
    Ok(format!(
        "{{\n  \"date\": {},\n  \"command\": {},\n  \"git\": {},\n  \"vmwatch_version\": {},\n  \"sources\": {},\n  \"sources_note\": {},\n  \"interval\": {},\n  \"budget\": {},\n  \"windows_per_scenario\": {},\n  \"phases\": {},\n  \"vms\": {},\n  \"accelerator\": {},\n  \"guest_memory_mib\": {},\n  \"base_seed\": {},\n  \"load\": {{\"web_rate\": [{}, {}], \"web_segment_seconds\": {}, \"peak_rate\": {}}},\n  \"network\": {{\"subnet\": {}, \"host\": {}, \"first_vm\": {}}},\n  \"seconds\": {},\n  \"scenarios\": [\n{}\n  ],\n  \"qemu\": {},\n  \"guest\": {}\n}}\n",
        j(date),
        j(&command.join(" ")),
        j(&git),
        j(&vmwatch_version),
        j(SOURCES),
        j(sources_note(o.run.accel)),
        j(&o.run.interval),
        j(&o.run.budget),
        o.run.windows,
        match o.run.phases {
            Some(p) => format!(
                "{{\"normal_seconds\": {}, \"anomaly_seconds\": {}, \"spread\": 0.5, \"settle_windows\": 1, \"normal_label\": {}, \"switch_label\": {}}}",
                p.normal.as_secs_f64(),
                p.anomaly.as_secs_f64(),
                j(phases::NORMAL_LABEL),
                j(phases::SWITCH_LABEL)
            ),
            None => "null".to_string(),
        },
        o.run.vms,
        j(o.run.accel.as_str()),
        o.run.memory_mib,
        o.seed,
        load::WEB_RATE.0,
        load::WEB_RATE.1,
        load::WEB_SEGMENT_S,
        load::PEAK_RATE,
        j(net::SUBNET),
        j(net::HOST_IP),
        j(&net::vm_ip(0)),
        elapsed.as_secs(),
        scenarios.join(",\n"),
        qemu_info.replace('\n', "\n  "),
        guest_info.replace('\n', "\n  "),
    ))
}

/// The CI smoke test: builds what is missing, boots one VM, records 3 windows
/// of `idle` and checks that the rows belong to its PID and counted probes;
/// then a phased recording of `synflood-source` (the guest's flood switched
/// on and off through the console) with windows of both phases.
pub fn smoke(vmwatch: Option<&Path>) -> Result<()> {
    let dir = TempDir::create(
        std::env::temp_dir().join(format!("vmwatch-lab-smoke-{}", std::process::id())),
    )?;
    let run = RunOpts {
        windows: 3,
        interval: "2s".into(),
        vms: 1,
        qemu: qemu::Variant::default(),
        budget: "none".into(),
        phases: None,
        accel: Accel::Tcg,
        memory_mib: 512,
        vmwatch: Some(vmwatch_binary(vmwatch)?),
    };
    let rec = record(&RecordOpts {
        scenario: scenario::find("idle")?,
        run: run.clone(),
        seed: 1,
        output: dir.0.join("idle.csv"),
        force: true,
    })?;
    note(format!(
        "lab smoke test: {} rows of QEMU pid {:?}, {:.0} probe hits per window, {} features, {}",
        rec.rows,
        rec.pids,
        rec.qemu_hits_per_window,
        rec.features,
        util::human_duration(Duration::from_secs_f64(rec.seconds))
    ));
    let scenario = scenario::find("synflood-source")?;
    let phased = record(&RecordOpts {
        scenario,
        run: RunOpts {
            windows: 16,
            phases: Some(Phases {
                normal: Duration::from_secs(10),
                anomaly: Duration::from_secs(12),
            }),
            ..run
        },
        seed: 1,
        output: dir.0.join("phased.csv"),
        force: true,
    })?;
    let windows = |l: &str| {
        phased
            .labels
            .iter()
            .find(|(k, _)| k == l)
            .map_or(0, |(_, n)| *n)
    };
    if phased.switches.is_empty()
        || windows(phases::NORMAL_LABEL) == 0
        || windows(scenario.name) == 0
    {
        bail!(
            "the phased recording has {} switch(es) and windows {:?}: expected both phases",
            phased.switches.len(),
            phased.labels
        );
    }
    // The guest's web traffic comes in as frames on its receive queue.
    let frames = received_frames(&dir.0.join("phased.csv"), phases::NORMAL_LABEL)?;
    let total: f64 = frames.iter().map(|(_, n)| n).sum();
    if total <= 0.0 {
        bail!("the web windows received no frame: no arg:virtqueue_fill:len:rx:* bucket counted");
    }
    note(bucketed_hits(&dir.0.join("phased.csv"))?);
    note(transitions_in(&dir.0.join("phased.csv"))?);
    note(format!(
        "received frames in the web windows, by size: {}",
        frames
            .iter()
            .filter(|(_, n)| *n > 0.0)
            .map(|(b, n)| format!("{b} bytes {n:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    note(format!(
        "lab smoke test passed: a phased recording of {} with {} switches, windows {:?}, {}",
        scenario.name,
        phased.switches.len(),
        phased.labels,
        util::human_duration(Duration::from_secs_f64(phased.seconds))
    ));
    Ok(())
}

/// Checks that every hit of each argument family's probe in the dataset
/// `path` fell in one of the family's buckets: exactly for the virtio-blk
/// families, and for `virtqueue_fill` but for the few fills of queues not
/// yet seen popped when recording began (a bucket needs the queue's kind).
fn bucketed_hits(path: &Path) -> Result<String> {
    /// Fills that may precede their queue's first pop seen.
    const UNKNOWN_QUEUE: f64 = 16.0;
    /// Hits that may land between the reads of a column's chunk and its
    /// buckets' chunk at the last drain (each side of a window boundary).
    const RACE: f64 = 16.0;
    let table = Table::read(path)?;
    let total = |pick: &dyn Fn(&str) -> bool| -> f64 {
        (0..table.features.len())
            .filter(|&j| pick(&table.features[j]))
            .map(|j| table.x.column(j).sum())
            .sum()
    };
    let mut out = Vec::new();
    for fam in &arguments::FAMILIES {
        let hits = total(&|f| f.strip_prefix(features::QEMU) == Some(fam.probe));
        let prefix = format!("arg:{}:{}:", fam.probe, fam.arg);
        let bucketed = total(&|f| f.starts_with(&prefix));
        let slack = if fam.queue.is_some() {
            UNKNOWN_QUEUE
        } else {
            0.0
        };
        if bucketed > hits + RACE || bucketed + slack + RACE < hits {
            bail!(
                "{}: {} {} hits, {bucketed} of them in `{prefix}*` buckets",
                path.display(),
                hits,
                fam.probe
            );
        }
        out.push(format!("{}.{} {bucketed}/{hits}", fam.probe, fam.arg));
    }
    Ok(format!("argument buckets / probe hits: {}", out.join(", ")))
}

/// Checks that the `seq:` transitions into each tracked probe add up to its
/// hits in the dataset `path`: every hit follows some tracked probe on its
/// thread but a thread's first (a QEMU has a few dozen threads), so the
/// kernel lost or invented none. Probes with no hit are left out.
fn transitions_in(path: &Path) -> Result<String> {
    /// A thread's first tracked hit, and hits that land between the reads
    /// of a probe's chunk and its transitions' chunk at the last drain.
    const SLACK: f64 = 64.0;
    let table = Table::read(path)?;
    let sum = |j: usize| table.x.column(j).sum();
    let mut out = Vec::new();
    for probe in TRACK.split(',') {
        let col = format!("{}{probe}", features::QEMU);
        let Some(j) = table.features.iter().position(|f| *f == col) else {
            bail!(
                "{}: no `{col}` column to check its transitions against",
                path.display()
            );
        };
        let hits = sum(j);
        let into: f64 = (0..table.features.len())
            .filter(|&k| {
                matches!(table.features[k].parse(),
                         Ok(features::Feature::Seq { ref to, .. }) if to == probe)
            })
            .map(sum)
            .sum();
        if hits == 0.0 {
            continue;
        }
        if into > hits + SLACK || into + SLACK < hits {
            bail!(
                "{}: {hits} {probe} hits, but {into} transitions into it",
                path.display()
            );
        }
        out.push(format!("{probe} {into}/{hits}"));
    }
    if out.is_empty() {
        bail!("{}: no tracked probe fired", path.display());
    }
    Ok(format!("transitions into / hits: {}", out.join(", ")))
}

/// The receive queues' frames of the windows labelled `label` in the
/// dataset `path`, by size bucket (`arg:virtqueue_fill:len:rx:*`), in
/// column order.
fn received_frames(path: &Path, label: &str) -> Result<Vec<(String, f64)>> {
    const RX: &str = "arg:virtqueue_fill:len:rx:";
    let table = Table::read(path)?;
    let rows: Vec<usize> = (0..table.len())
        .filter(|&n| table.keys[n].label == label)
        .collect();
    Ok(table
        .features
        .iter()
        .enumerate()
        .filter_map(|(j, f)| f.strip_prefix(RX).map(|b| (j, b)))
        .map(|(j, b)| (b.to_string(), rows.iter().map(|&n| table.x[[n, j]]).sum()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmwatch_core::dataset::{DatasetWriter, Row};

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmwatch-xtask-{}-{name}", std::process::id()));
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn load_rates_are_summed_over_the_vms() {
        let l = |sent, skipped, ok| load::Summary {
            sent,
            ok,
            failed: sent - ok,
            skipped,
            mean_latency_ms: 100.0,
            seconds: 10.0,
        };
        let loads = [l(20, 5, 18), l(30, 0, 30)];
        assert_eq!(served(&loads), "5.5/4.8");
        let j: serde_json::Value = serde_json::from_str(&load_json(&loads)).unwrap();
        assert_eq!(j["requested_per_s"], 5.5);
        assert_eq!(j["served_per_s"], 4.8);
        assert_eq!(
            (j["failed"].as_u64(), j["skipped"].as_u64()),
            (Some(2), Some(5))
        );
        assert_eq!((served(&[]), load_json(&[])), ("-".into(), "null".into()));
    }

    #[test]
    fn every_hit_of_an_argument_family_is_bucketed() {
        let head = "vm,pid,label,window,start_unix_ms,duration_ms,qemu:virtio_blk_handle_write,\
                    arg:virtio_blk_handle_write:nsectors:8-15,arg:virtio_blk_handle_write:nsectors:1,\
                    arg:virtio_blk_handle_write:sector:0,qemu:virtqueue_fill,\
                    arg:virtqueue_fill:len:rx:64-127,arg:virtqueue_fill:len:tx:0\n";
        let good = write(
            "args.csv",
            &format!("{head}v,10,web,0,1,2000,5,4,1,5,30,20,7\n"),
        );
        let line = bucketed_hits(&good).unwrap();
        assert!(
            line.contains("virtio_blk_handle_write.nsectors 5/5"),
            "{line}"
        );
        assert!(line.contains("virtqueue_fill.len 27/30"), "{line}");
        // A hit between the chunks' reads at the end is not lost.
        let raced = write(
            "raced.csv",
            &format!("{head}v,10,web,0,1,2000,5,5,1,6,30,20,7\n"),
        );
        assert!(bucketed_hits(&raced).is_ok());
        let lost = write(
            "lost.csv",
            &format!("{head}v,10,web,0,1,2000,50,4,0,50,30,20,7\n"),
        );
        let e = format!("{:#}", bucketed_hits(&lost).unwrap_err());
        assert!(
            e.contains("50 virtio_blk_handle_write hits, 4 of them"),
            "{e}"
        );
        let queues = write(
            "queues.csv",
            &format!("{head}v,10,web,0,1,2000,5,4,1,5,70,20,7\n"),
        );
        assert!(bucketed_hits(&queues).is_err(), "43 fills unbucketed");
    }

    #[test]
    fn dataset_checks() {
        let head = "vm,pid,label,window,start_unix_ms,duration_ms,qemu:a,sys:read\n";
        let good = write(
            "good.csv",
            &format!("{head}v,10,idle,0,1,2000,5,1\nv,10,idle,1,2,2000,3,0\n"),
        );
        let r = check_dataset(&good, &[10], &["idle"], 2).unwrap();
        assert_eq!(r.rows, 2);
        assert_eq!(r.features, 2);
        assert_eq!(r.qemu_hits_per_window, 4.0);
        let e = |p: &Path, pids: &[u32], n| {
            format!("{:#}", check_dataset(p, pids, &["idle"], n).unwrap_err())
        };
        assert!(e(&good, &[11], 2).contains("not a VM of this run"));
        assert!(e(&good, &[10], 3).contains("expected 3"));
        let zero = write("zero.csv", &format!("{head}v,10,idle,0,1,2000,0,9\n"));
        assert!(e(&zero, &[10], 1).contains("no QEMU probe"));
        let label = write("label.csv", &format!("{head}v,10,web,0,1,2000,1,9\n"));
        assert!(e(&label, &[10], 1).contains("label"));
        let swapped = write(
            "swapped.csv",
            "pid,vm,label,window,start_unix_ms,duration_ms\n",
        );
        assert!(e(&swapped, &[10], 0).contains("column 1 must be `vm`"));
        // As vmwatch writes it: gzip, and a VM name that needs quotes.
        let gz = std::env::temp_dir().join(format!(
            "vmwatch-xtask-{}-quoted.csv.gz",
            std::process::id()
        ));
        let mut w = DatasetWriter::create(&gz, &["qemu:a".to_string()], true).unwrap();
        w.write_row(&Row {
            vm: "web,\"1\"",
            pid: 10,
            label: "idle",
            window: 0,
            start_unix_ms: 1,
            duration_ms: 2000,
            qemu: None,
            counts: &[7],
            sampled: &[],
        })
        .unwrap();
        w.finish().unwrap();
        let r = check_dataset(&gz, &[10], &["idle"], 1).unwrap();
        assert_eq!((r.rows, r.features, r.qemu_hits_per_window), (1, 1, 7.0));
        for p in [good, zero, label, swapped, gz] {
            let _ = fs::remove_file(p);
        }
    }
}
