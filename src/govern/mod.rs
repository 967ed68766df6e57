//! The cost governor at run time (DESIGN.md, "Cost governor"): keeps each
//! VM's probe hits within a share of one CPU by turning hot probes on and
//! off, through their semaphores, which vmwatch raised itself
//! ([`crate::attach::semaphores`]), where they gate the probe, and
//! otherwise through links of the VM's own ([`crate::attach::switches`]).
//! A probe whose semaphore is down is not trapped at all when QEMU checks
//! it before the site, and turning it back on takes effect at once, with no
//! link churn. But QEMU's dtrace backend calls most probes unconditionally
//! (only those QEMU guards with `trace_event_get_state_backends()` are
//! gated), and some probes have no semaphore: such a probe, found hot, is
//! moved off the binary's link onto a link per watched process, attached
//! before each of its turns and detached after.
//!
//! Each window is cut into [`PHASES`] phases. At a phase start the
//! governor reads every VM's cumulative counts (one batched map read),
//! turns what each probe did in the last phase into a demand (hits per
//! second it was on, times its cost per hit), and plans the phase with
//! [`vmwatch_core::govern::plan`]: cheap probes stay on (exact), hot ones
//! are on for a fraction of it, starting at one random instant per phase
//! (so periodic guest activity does not alias with the schedule) and
//! turned off, by fraction, together. At the window's end each probe's
//! measured on-time over the window's length is its sampling fraction;
//! its count is divided by it and marked as an estimate.
//!
//! Another tracer on the same semaphore (its value above vmwatch's own
//! increment) keeps the probe firing while vmwatch thinks it is off, which
//! would inflate the estimate: such a probe is put back on and counted
//! exactly for good. So is a probe that keeps firing while its semaphore is
//! down, until it is moved onto links.

pub mod calibrate;
pub mod ungated;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vmwatch_core::govern::{estimate, fraction, plan, HitCost, Level, MAX_LEVEL, STEPS};

use crate::attach::semaphores::Raised;
use crate::attach::switches::{self, Switches};
use crate::attach::uprobes::{AttachedProbe, BinaryAttachment, ProcessLinks};
use crate::attach::Kernel;
use crate::discover::procs::Process;
use crate::error::Result;

/// Phases per window.
pub const PHASES: u32 = 4;

/// What a hit costs when it cannot be measured here (DESIGN.md's figures
/// for Linux 6.18: 5-byte-nop sites, int3 sites), in ns.
pub const DEFAULT_NOP5_NS: f64 = 850.0;
pub const DEFAULT_TRAP_NS: f64 = 1070.0;

/// What a hit costs on this host, measured with `prog` (the counting
/// program) on sites of vmwatch's own; DESIGN.md's figures if that fails.
pub fn hit_cost(prog: &libbpf_rs::ProgramMut<'_>) -> HitCost {
    match calibrate::measure(prog) {
        Ok(m) => {
            tracing::info!(
                "a counted probe hit costs {:.0} ns on 5-byte-nop sites, {:.0} ns on int3 \
                 sites here (measured in {:.0?}; --hit-cost sets it)",
                m.nop5_ns,
                m.trap_ns,
                m.took
            );
            HitCost {
                nop5_ns: m.nop5_ns,
                trap_ns: m.trap_ns,
            }
        }
        Err(e) => {
            tracing::warn!(
                "could not measure what a probe hit costs here ({}); assuming {DEFAULT_NOP5_NS} \
                 ns on 5-byte-nop sites and {DEFAULT_TRAP_NS} ns on int3 sites (--hit-cost sets it)",
                vmwatch_core::error::chain(&e)
            );
            HitCost {
                nop5_ns: DEFAULT_NOP5_NS,
                trap_ns: DEFAULT_TRAP_NS,
            }
        }
    }
}

/// What is left of a probe's remembered demand after a phase (2^(-1/4):
/// half of it after a window).
const DEMAND_DECAY: f64 = 0.840_896_415_253_714_5;

/// While a window pays back what it or the last one overspent, it is
/// planned with at least this share of the budget.
const MIN_SHARE: f64 = 0.25;

/// Hits a probe may count while off before it is taken for one its
/// semaphore does not gate (a few race with the turn-off).
const UNGATED_HITS: f64 = 20.0;

/// Hits a probe would have counted over its off-times, at its rate when
/// on, before silence then proves its semaphore gates it: several bursts'
/// worth, as a probe may fire in bursts (SeaBIOS's 18.2-Hz tick fires
/// `memory_notdirty_write_access` ~114 times at once) and be silent through
/// short off-times whatever its rate.
const GATED_EXPECTED: f64 = 500.0;

/// The smallest sampling fraction a window's estimate divides by: a tenth
/// of the smallest planned one.
const MIN_WINDOW_FRACTION: f64 = vmwatch_core::govern::MIN_FRACTION / 10.0;

/// Probes with a sampling fraction above this over a window are exact
/// (on-times are measured to the microsecond, the window to the ms).
const EXACT: f64 = 0.999;

/// How the governor runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GovernConfig {
    /// Share of one CPU each VM's probe hits may cost (0.01 = 1%);
    /// `None`: every probe exact.
    pub budget: Option<f64>,
    /// What a hit costs, by kind of site.
    pub cost: HitCost,
}

/// How a probe is turned on and off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Through its semaphores (until it fires while they are down).
    Semaphores,
    /// Not at all yet: its semaphores do not gate it, or it has none. Exact
    /// until the plan wants it thinned and it is moved onto links.
    Unswitched,
    /// Through the switches of the VM's own links.
    Links,
    /// Exact for good: tracked for `seq:` features (a probe that is off
    /// would break its threads' transitions), another tracer holds its
    /// semaphore, or its links could not be attached.
    Exact,
}

/// One governed probe of one VM.
#[derive(Debug)]
struct Probe {
    column: usize,
    /// Indices into the VM's [`Raised`].
    sems: Vec<usize>,
    gate: Gate,
    cost_ns: f64,
    /// This phase's plan (0: exact).
    level: Level,
    on: bool,
    on_since: Instant,
    /// Time on in this window and in this phase, up to `on_since`.
    window_on: Duration,
    phase_on: Duration,
    /// Cumulative count at the phase start (`None` before the first).
    last: Option<u64>,
    /// What it costs counted exactly, as last measured (ns of CPU per s).
    demand: f64,
    /// Hits counted while it was off, and for how long (s) it was: a
    /// probe its semaphore gates counts none.
    off_hits: f64,
    off_secs: f64,
    /// Seen off long enough to tell, and silent then: its semaphore gates
    /// it, so its counts can be estimated.
    gated: bool,
    /// Its cumulative count read once this phase's turn-offs were done, and
    /// when: what it counts from there until it is turned on came while off,
    /// what it counted before while it was being turned off.
    off_base: Option<(u64, Instant)>,
    /// This window's hits counted while it was off, before a turn-on or in
    /// a phase it was never on: kept as counted, never divided by its
    /// on-fraction (a few racing or leaking hits would stand for thousands).
    unscaled: u64,
    /// This window's hits in its phases already measured.
    window_counted: u64,
    /// Its cumulative count when it was turned on this phase, and when.
    on_base: Option<(u64, Instant)>,
    /// Hits from its turn-ons to the ends of their phases, and how long
    /// (s) that was: its rate as the ungated test compares hits while off
    /// with (not hits over on-time, which a probe that never really turns
    /// off inflates without bound).
    after_on_hits: f64,
    after_on_secs: f64,
}

impl Probe {
    /// What a phase's `hits` counted while off: all of them if it was never
    /// on, else those from the end of its turn-off to its turn-on.
    fn off_hits_of_phase(&self, hits: u64) -> u64 {
        match (self.on_base, self.off_base) {
            _ if self.phase_on.is_zero() => hits,
            (Some((t, _)), Some((off, _))) => t.wrapping_sub(off).min(hits),
            _ => 0,
        }
    }

    /// Adds the time on up to `now` to the window's and phase's totals.
    fn account(&mut self, now: Instant) {
        if self.on {
            let d = now.saturating_duration_since(self.on_since);
            self.window_on += d;
            self.phase_on += d;
            self.on_since = now;
        }
    }
}

/// The governor's view of one watched process: its counted probes, their
/// state and their cost.
#[derive(Debug)]
pub struct VmProbes {
    probes: Vec<Probe>,
    window_start: Instant,
    phase_start: Instant,
    /// CPU time (ns) the window's hits cost up to the last phase start.
    spent_ns: f64,
    /// What the last window spent beyond its budget, paid back in this one.
    debt_ns: f64,
    /// The budget share the last window was planned with, for its debt.
    share: Option<f64>,
    /// The slot's switched-off hits at the last phase start (cumulative).
    last_dark: Option<u64>,
}

/// What a closed window's probes did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WindowCost {
    /// Hits trapped (counted, or on a link being attached or detached),
    /// before any estimate.
    pub hits: u64,
    /// Of these, the hits of switched-off links (not counted).
    pub dark: u64,
    /// CPU time they cost the VM, in ns.
    pub cpu_ns: f64,
    /// Estimated columns and their sampling fractions.
    pub sampled: Vec<(usize, f64)>,
}

impl VmProbes {
    /// All probes on (as [`crate::attach::semaphores::raise`] left them).
    pub fn new(attached: &[AttachedProbe], cost: &HitCost, now: Instant) -> Self {
        let probes = attached
            .iter()
            .map(|p| Probe {
                column: p.column as usize,
                sems: p.semaphores.clone(),
                gate: if p.tracked {
                    Gate::Exact
                } else if p.semaphores.is_empty() {
                    Gate::Unswitched
                } else {
                    Gate::Semaphores
                },
                cost_ns: cost.of(p.nop5) + p.extra_ns,
                level: 0,
                on: true,
                on_since: now,
                window_on: Duration::ZERO,
                phase_on: Duration::ZERO,
                last: None,
                demand: 0.0,
                off_hits: 0.0,
                off_secs: 0.0,
                gated: false,
                off_base: None,
                unscaled: 0,
                window_counted: 0,
                on_base: None,
                after_on_hits: 0.0,
                after_on_secs: 0.0,
            })
            .collect();
        Self {
            probes,
            window_start: now,
            phase_start: now,
            spent_ns: 0.0,
            debt_ns: 0.0,
            share: None,
            last_dark: None,
        }
    }

    /// What a hit of a switched-off link is charged: the dearest linked
    /// probe's cost (which one trapped is not known).
    fn dark_cost(&self) -> f64 {
        self.probes
            .iter()
            .filter(|p| p.gate == Gate::Links)
            .map(|p| p.cost_ns)
            .fold(0.0, f64::max)
    }

    /// Levels in use this phase (above 0).
    fn levels(&self) -> impl Iterator<Item = Level> + '_ {
        self.probes.iter().map(|p| p.level).filter(|&k| k > 0)
    }

    /// Ends the window at `now`: what its hits cost (from the counted,
    /// `counts`, and the `dark` hits of switched-off links), then every
    /// duty-cycled probe's count replaced by its estimate.
    pub fn close_window(&mut self, now: Instant, counts: &mut [u64], dark: u64) -> WindowCost {
        let len = now.saturating_duration_since(self.window_start);
        let dark_ns = self.dark_cost();
        let mut out = WindowCost {
            hits: dark,
            dark,
            cpu_ns: dark as f64 * dark_ns,
            ..WindowCost::default()
        };
        for p in &mut self.probes {
            p.account(now);
            let unscaled = std::mem::take(&mut p.unscaled);
            let counted = std::mem::take(&mut p.window_counted);
            let Some(c) = counts.get_mut(p.column) else {
                continue;
            };
            out.hits += *c;
            out.cpu_ns += *c as f64 * p.cost_ns;
            let f = if len.is_zero() {
                1.0
            } else {
                p.window_on.as_secs_f64() / len.as_secs_f64()
            };
            p.window_on = Duration::ZERO;
            let unscaled = if p.last.is_some() {
                unscaled + p.off_hits_of_phase(c.saturating_sub(counted))
            } else {
                unscaled
            }
            .min(*c);
            // Only a probe known to be gated is estimated: one not yet seen
            // off long enough may be one that was never really off, whose
            // count divided by its on-time would be far too high. Its count
            // stays as counted (low, if it is gated after all: such a probe
            // fires too rarely to have been told apart within the window).
            if f < EXACT && p.gated && unscaled < *c {
                // On for less than planned (a wake-up lost to a loaded
                // machine) still counts as the floor's share.
                let f = f.max(MIN_WINDOW_FRACTION);
                let est = unscaled + estimate(*c - unscaled, f);
                // The fraction the row carries: counted / estimate, as the
                // dataset defines it (below f when hits came while off).
                // An estimate rounded to the count is the count.
                if est > *c {
                    out.sampled.push((p.column, *c as f64 / est as f64));
                    *c = est;
                }
            }
        }
        // A window whose first phase was counted exactly before the load
        // was known overspends: the next one pays it back (at most its
        // whole budget), so the budget holds over time.
        self.debt_ns = match self.share {
            Some(share) => {
                let allowed = share * 1e9 * len.as_secs_f64();
                (out.cpu_ns + self.debt_ns - allowed).clamp(0.0, allowed)
            }
            None => 0.0,
        };
        self.spent_ns = 0.0;
        self.window_start = now;
        out
    }

    /// Starts a phase at `now`: measures the last one from the cumulative
    /// counts `cum` (a row of the counter map), plans this one within
    /// `share` (`None`: all exact) of windows of `window` (what the window
    /// spent so far and the last one's debt taken off), and returns the
    /// probes that can be turned off.
    fn start_phase(
        &mut self,
        now: Instant,
        cum: &[u64],
        dark: Option<u64>,
        share: Option<f64>,
        window: Duration,
    ) -> Vec<usize> {
        // The phase before a window's first belongs to the last window,
        // whose exact total [`VmProbes::close_window`] charged.
        let this_window = self.phase_start >= self.window_start;
        // Hits of links being switched cost as much as counted ones.
        if let Some(d) = dark {
            if let (Some(last), true) = (self.last_dark, this_window) {
                self.spent_ns += d.wrapping_sub(last) as f64 * self.dark_cost();
            }
            self.last_dark = Some(d);
        }
        for p in &mut self.probes {
            p.account(now);
            let total = cum.get(p.column).copied().unwrap_or(0);
            if let Some(last) = p.last {
                let hits = total.wrapping_sub(last);
                let off = p.off_hits_of_phase(hits);
                if let Some((t, at)) = p.on_base {
                    p.after_on_hits += total.wrapping_sub(t) as f64;
                    p.after_on_secs += now.saturating_duration_since(at).as_secs_f64();
                }
                if this_window {
                    self.spent_ns += hits as f64 * p.cost_ns;
                    p.window_counted += hits;
                    p.unscaled += off;
                }
                // Its rate while on: the hits while off do not count.
                let n = (hits - off) as f64;
                let on = p.phase_on.as_secs_f64();
                // A probe off all phase long keeps its last demand. A
                // burst is remembered for a few phases (half-life one
                // window): guest load comes in bursts shorter than a phase
                // apart, and a plan made from the quiet phase between two
                // would overspend on the next.
                if on > 0.0 {
                    p.demand = (n / on * p.cost_ns).max(p.demand * DEMAND_DECAY);
                }
            }
            p.last = Some(total);
            p.phase_on = Duration::ZERO;
            p.on_base = None;
            p.off_base = None;
        }
        self.phase_start = now;
        self.share = share;
        let Some(share) = share else {
            return Vec::new();
        };
        // What the rest of the window may spend, per second of it.
        let left = (self.window_start + window)
            .saturating_duration_since(now)
            .max(window / (2 * PHASES));
        let allowed = share * 1e9 * window.as_secs_f64() - self.spent_ns - self.debt_ns;
        // Paying back never starves the cheap probes: a floor of the budget.
        let share = (allowed / left.as_secs_f64() / 1e9).max(share * MIN_SHARE);
        let fixed: f64 = self
            .probes
            .iter()
            .filter(|p| p.gate == Gate::Exact)
            .map(|p| p.demand)
            .sum();
        let idx: Vec<usize> = (0..self.probes.len())
            .filter(|&i| self.probes[i].gate != Gate::Exact)
            .collect();
        let demand: Vec<f64> = idx.iter().map(|&i| self.probes[i].demand).collect();
        let planned = plan(&demand, fixed, share);
        for (&i, &k) in idx.iter().zip(&planned.levels) {
            let p = &mut self.probes[i];
            // A level is a link per VM and phase for linked probes: they
            // take powers of two only (rounded down, within the plan), so a
            // phase attaches a few links, not one per level.
            p.level = match p.gate {
                Gate::Links | Gate::Unswitched if k > 0 => k.div_ceil(STEPS) * STEPS,
                _ => k,
            }
            .min(MAX_LEVEL);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut hot: Vec<&Probe> = self.probes.iter().filter(|p| p.level > 0).collect();
            hot.sort_by(|a, b| b.demand.total_cmp(&a.demand));
            let top: Vec<String> = hot
                .iter()
                .take(4)
                .map(|p| {
                    format!(
                        "#{} {:?} {:.3}% at {:.4}",
                        p.column,
                        p.gate,
                        p.demand / 1e7,
                        fraction(p.level)
                    )
                })
                .collect();
            tracing::debug!(
                "phase plan: {:.3}% per s for the rest of the window (spent {:.2} ms, debt {:.2} \
                 ms), exact {:.3}%, {} thinned: {}",
                share * 100.0,
                self.spent_ns / 1e6,
                self.debt_ns / 1e6,
                fixed / 1e7,
                hot.len(),
                top.join(", ")
            );
        }
        // Exact now: on at once. Duty-cycled: off until the phase's turn.
        (0..self.probes.len())
            .filter(|&i| self.probes[i].gate == Gate::Semaphores)
            .collect()
    }

    /// Probes not yet switchable that this phase wants thinned: to be moved
    /// onto links ([`VmProbes::linked`]).
    fn to_split(&self) -> Vec<usize> {
        self.probes
            .iter()
            .filter(|p| p.gate == Gate::Unswitched && p.level > 0)
            .map(|p| p.column)
            .collect()
    }

    /// The probes of `columns` are on the VM's links from now on (counted
    /// all along: on, and known to be gated by their links).
    pub fn linked(&mut self, columns: &[u32]) {
        for p in &mut self.probes {
            if columns.binary_search(&(p.column as u32)).is_ok() && p.gate != Gate::Links {
                p.gate = Gate::Links;
                p.gated = true;
            }
        }
    }

    /// The probes of `columns` could not be moved onto links: exact for good.
    pub fn keep_exact(&mut self, columns: &[u32]) {
        for p in &mut self.probes {
            if columns.binary_search(&(p.column as u32)).is_ok() {
                p.gate = Gate::Exact;
                p.level = 0;
            }
        }
    }

    /// Columns (sorted) of the linked probes at `level`.
    fn linked_at(&self, level: Level) -> Vec<u32> {
        self.probes
            .iter()
            .filter(|p| p.gate == Gate::Links && p.level == level)
            .map(|p| p.column as u32)
            .collect()
    }

    /// Marks the linked probes of `columns` on or off at `at`.
    fn set_linked(&mut self, columns: &[u32], on: bool, at: Instant) {
        for p in &mut self.probes {
            if p.gate == Gate::Links && columns.binary_search(&(p.column as u32)).is_ok() {
                p.account(at);
                p.on = on;
                p.on_since = at;
            }
        }
    }

    /// Before the duty-cycled probes turn on at `now` (once a phase): those
    /// that counted hits since their turn-off took effect, while their
    /// semaphore was down, are not
    /// gated by it. They become exact for good, and count as exact for the
    /// whole window (they were never really off), once turned on with
    /// [`VmProbes::keep_on`]. Returns their indices.
    fn find_ungated(&mut self, now: Instant, cum: &[u64]) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, p) in self.probes.iter_mut().enumerate() {
            let (Some(_), false, Gate::Semaphores) = (p.last, p.on, p.gate) else {
                continue;
            };
            let Some(&total) = cum.get(p.column) else {
                continue;
            };
            // A gated probe counts nothing while off; an ungated one keeps
            // its rate. Counted from a read taken once it was off, so hits
            // before the turn-off (a loaded machine can delay it) are not
            // taken for hits while off.
            let Some((base, at)) = p.off_base else {
                continue;
            };
            // Its rate from its turn-ons on, once it has been cycled (the
            // same for one its semaphore does not gate); before, as
            // measured while it was exact.
            let rate = if p.after_on_secs > 0.0 {
                p.after_on_hits / p.after_on_secs
            } else {
                p.demand / p.cost_ns.max(1e-9)
            };
            p.off_hits += total.wrapping_sub(base) as f64;
            p.off_secs += now.saturating_duration_since(at).as_secs_f64();
            let expected = rate * p.off_secs;
            if p.off_hits > UNGATED_HITS && p.off_hits > 0.1 * expected {
                p.gate = Gate::Unswitched;
                p.level = 0;
                out.push(i);
            } else if expected >= GATED_EXPECTED {
                p.gated = true;
            }
        }
        out
    }

    /// Before the duty-cycled probes their semaphores switch turn on: their
    /// cumulative counts `cum` then; what each counted since its turn-off
    /// took effect came while it was off.
    fn turning_on(&mut self, cum: &[u64], now: Instant) {
        for p in &mut self.probes {
            if p.level == 0 || p.on || p.gate != Gate::Semaphores {
                continue;
            }
            p.on_base = cum.get(p.column).map(|&c| (c, now));
        }
    }

    /// After a phase's turn-offs: the cumulative counts `cum`, read at
    /// `at`, are the base of each off probe's hits while off.
    pub fn set_off_base(&mut self, cum: &[u64], at: Instant) {
        for p in &mut self.probes {
            p.off_base = match cum.get(p.column) {
                Some(&c) if !p.on && p.gate == Gate::Semaphores => Some((c, at)),
                _ => None,
            };
        }
    }

    /// Turns the probes `which` on for good, as counted exactly since the
    /// window began; returns their columns.
    fn keep_on(&mut self, which: &[usize], raised: &mut Raised) -> Result<Vec<usize>> {
        // Raised as vmwatch promised, though they do not gate the probes.
        let sems: Vec<usize> = which
            .iter()
            .flat_map(|&i| self.probes[i].sems.iter().copied())
            .collect();
        raised.set(&sems, true)?;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.window_start);
        Ok(which
            .iter()
            .map(|&i| {
                let p = &mut self.probes[i];
                p.on = true;
                p.unscaled = 0;
                p.window_on = elapsed;
                p.phase_on = now.saturating_duration_since(self.phase_start);
                p.on_since = now;
                p.column
            })
            .collect())
    }

    /// Turns on (`on`) or off the probes `which` that are not in that
    /// state; returns the columns found to be shared with another tracer
    /// (now exact for good).
    fn turn(&mut self, which: &[usize], on: bool, raised: &mut Raised) -> Result<Vec<usize>> {
        let which: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.probes[i].on != on && self.probes[i].gate == Gate::Semaphores)
            .collect();
        if which.is_empty() {
            return Ok(Vec::new());
        }
        let sems: Vec<usize> = which
            .iter()
            .flat_map(|&i| self.probes[i].sems.iter().copied())
            .collect();
        let before = raised.set(&sems, on)?;
        // When the writes took effect: on-times are measured, not planned.
        let now = Instant::now();
        for &i in &which {
            let p = &mut self.probes[i];
            p.account(now);
            p.on = on;
            p.on_since = now;
        }
        // More than vmwatch's own increment: someone else holds it.
        let mine = if on { 0 } else { 1 };
        let shared: BTreeSet<usize> = before
            .iter()
            .filter(|(_, v)| *v > mine)
            .map(|(s, _)| *s)
            .collect();
        if shared.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut back_on = Vec::new();
        for &i in &which {
            let p = &mut self.probes[i];
            if p.sems.iter().any(|s| shared.contains(s)) {
                p.gate = Gate::Exact;
                p.level = 0;
                out.push(p.column);
                if !on {
                    back_on.push(i);
                }
            }
        }
        if !back_on.is_empty() {
            let sems: Vec<usize> = back_on
                .iter()
                .flat_map(|&i| self.probes[i].sems.iter().copied())
                .collect();
            raised.set(&sems, true)?;
            for &i in &back_on {
                let p = &mut self.probes[i];
                p.on = true;
                p.on_since = now;
            }
        }
        Ok(out)
    }
}

/// The phase schedule every watched VM follows.
#[derive(Debug)]
pub struct Schedule {
    phase_len: Duration,
    phase_start: Instant,
    /// When the duty-cycled probes turn on, if not yet.
    on_at: Option<Instant>,
    /// When each level's probes turn off, earliest first.
    off_at: Vec<(Instant, Level)>,
    rng: u64,
}

/// What is due at a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Phase,
    On,
    Off(Level),
}

impl Schedule {
    pub fn new(interval: Duration, now: Instant) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Self {
            phase_len: interval / PHASES,
            phase_start: now,
            on_at: None,
            off_at: Vec::new(),
            rng: seed ^ u64::from(std::process::id()).rotate_left(32),
        }
    }

    /// Whether this phase duty-cycles any probe.
    pub fn cycles(&self) -> bool {
        self.on_at.is_some()
    }

    /// The window length the phases divide.
    pub fn window(&self) -> Duration {
        self.phase_len * PHASES
    }

    pub fn set_interval(&mut self, interval: Duration) {
        self.phase_len = (interval / PHASES).max(Duration::from_millis(1));
    }

    /// The next instant something is due.
    pub fn next(&self) -> Instant {
        let mut t = self.phase_start + self.phase_len;
        if let Some(on) = self.on_at {
            t = t.min(on);
        }
        if let Some(&(off, _)) = self.off_at.first() {
            t = t.min(off);
        }
        t
    }

    /// What is due at `now`, earliest first (a phase end last: it is
    /// handled after the turns that precede it).
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        if let Some(on) = self.on_at.filter(|&t| t <= now) {
            // Woken late, the probes still get their planned on-time: the
            // turns off move by as much.
            let late = now.saturating_duration_since(on);
            for (t, _) in &mut self.off_at {
                *t += late;
            }
            self.on_at = None;
            return Some(Due::On);
        }
        if self.off_at.first().is_some_and(|&(t, _)| t <= now) {
            return Some(Due::Off(self.off_at.remove(0).1));
        }
        (self.phase_start + self.phase_len <= now).then_some(Due::Phase)
    }

    /// Moves the pending turn-offs by `d` (the turn-on took that long).
    pub fn delay_offs(&mut self, d: Duration) {
        for (t, _) in &mut self.off_at {
            *t += d;
        }
    }

    /// A new phase from `now`, for the levels in use.
    fn plan(&mut self, now: Instant, levels: &BTreeSet<Level>) {
        self.phase_start = now;
        self.off_at.clear();
        self.on_at = None;
        let Some(&top) = levels.first() else { return };
        // xorshift: enough to place the on-time at random.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let u = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let len = self.phase_len.as_secs_f64();
        let start = now + Duration::from_secs_f64(u * len * (1.0 - fraction(top)));
        self.on_at = Some(start);
        self.off_at = levels
            .iter()
            .map(|&k| (start + Duration::from_secs_f64(fraction(k) * len), k))
            .collect();
        self.off_at.sort_by_key(|&(t, _)| t);
    }
}

/// A VM's probes, its semaphores and links, as the collector hands them
/// over.
pub struct Governed<'a> {
    pub process: &'a Process,
    pub probes: &'a mut VmProbes,
    pub raised: &'a mut Raised,
    pub links: &'a mut ProcessLinks,
    /// Its binary's link and sites.
    pub binary: &'a BinaryAttachment,
    /// Its cumulative counter row, when a phase starts.
    pub cum: Option<&'a [u64]>,
    /// Its switched-off hits (cumulative), when a phase starts.
    pub dark: Option<u64>,
}

/// What the governor attaches links with.
pub struct Linker<'a, 'obj> {
    pub kernel: &'a Kernel<'obj>,
    pub switches: &'a mut Switches,
}

/// Probes newly found not to be duty-cycled through their semaphores, by
/// PID.
#[derive(Debug, Default)]
pub struct Found {
    /// Another tracer holds their semaphores.
    pub shared: Vec<(u32, Vec<usize>)>,
    /// They fire while their semaphore is down: the program does not check
    /// it before the site (QEMU's dtrace and ust backends call most probes
    /// unconditionally), so turning them off saves nothing.
    pub ungated: Vec<(u32, Vec<usize>)>,
    /// Not gated by semaphores and to be thinned: to be moved onto links
    /// (by the collector, which owns the binaries' links).
    pub split: Vec<(u32, Vec<usize>)>,
}

/// Runs what is due at `now` for every VM; returns the probes newly found
/// not to be duty-cycled through their semaphores.
pub fn run_due(
    due: Due,
    now: Instant,
    schedule: &mut Schedule,
    budget: Option<f64>,
    vms: &mut [Governed<'_>],
    linker: &mut Linker<'_, '_>,
) -> Found {
    let mut found = Found::default();
    let shared = &mut found.shared;
    let mut note = |pid: u32, r: Result<Vec<usize>>| match r {
        Ok(cols) if !cols.is_empty() => shared.push((pid, cols)),
        Ok(_) => {}
        // A process that exits is noticed at the drain.
        Err(e) => tracing::debug!("PID {pid}: {}", vmwatch_core::error::chain(&e)),
    };
    match due {
        Due::Phase => {
            let mut levels = BTreeSet::new();
            for vm in vms.iter_mut() {
                let Some(cum) = vm.cum else { continue };
                let all = vm
                    .probes
                    .start_phase(now, cum, vm.dark, budget, schedule.window());
                let (exact, cycled): (Vec<usize>, Vec<usize>) = all
                    .into_iter()
                    .partition(|&i| vm.probes.probes[i].level == 0);
                let r = vm.probes.turn(&exact, true, vm.raised);
                note(vm.process.pid, r);
                let r = vm.probes.turn(&cycled, false, vm.raised);
                note(vm.process.pid, r);
                sync_exact_links(vm, linker);
                let split = vm.probes.to_split();
                if !split.is_empty() {
                    found.split.push((vm.process.pid, split));
                }
                levels.extend(vm.probes.levels());
            }
            schedule.plan(now, &levels);
        }
        Due::On => {
            // Links first (each takes a grace period to attach), then every
            // turn-on at once; the turn-offs move by the time that took.
            let mut pending = Vec::new();
            for (v, vm) in vms.iter_mut().enumerate() {
                for k in vm.probes.levels().collect::<BTreeSet<_>>() {
                    let cols = vm.probes.linked_at(k);
                    if cols.is_empty() {
                        continue;
                    }
                    match ProcessLinks::attach(
                        linker.kernel,
                        linker.switches,
                        vm.binary,
                        vm.process,
                        &cols,
                    ) {
                        Ok(link) => pending.push((v, k, link)),
                        Err(e) => {
                            tracing::warn!(
                                "PID {}: {}; {} probe(s) stay off this phase",
                                vm.process.pid,
                                vmwatch_core::error::chain(&e),
                                cols.len()
                            );
                        }
                    }
                }
            }
            for (v, vm) in vms.iter_mut().enumerate() {
                if let Some(cum) = vm.cum {
                    let ungated = vm.probes.find_ungated(now, cum);
                    vm.probes.turning_on(cum, now);
                    if !ungated.is_empty() {
                        match vm.probes.keep_on(&ungated, vm.raised) {
                            Ok(cols) => found.ungated.push((vm.process.pid, cols)),
                            Err(e) => {
                                tracing::debug!(
                                    "PID {}: {}",
                                    vm.process.pid,
                                    vmwatch_core::error::chain(&e)
                                )
                            }
                        }
                    }
                }
                let which: Vec<usize> = (0..vm.probes.probes.len())
                    .filter(|&i| vm.probes.probes[i].level > 0)
                    .collect();
                let r = vm.probes.turn(&which, true, vm.raised);
                note(vm.process.pid, r);
                for (_, k, mut link) in take_where(&mut pending, |(w, _, _)| *w == v) {
                    match switches::flip(linker.kernel, &mut link, true) {
                        Ok(at) => {
                            vm.probes.set_linked(&link.columns, true, at);
                            vm.links.cycled.push((k, link));
                        }
                        Err(e) => {
                            tracing::warn!(
                                "PID {}: {}",
                                vm.process.pid,
                                vmwatch_core::error::chain(&e)
                            );
                            linker.switches.retire(linker.kernel, link);
                        }
                    }
                }
            }
            schedule.delay_offs(Instant::now().saturating_duration_since(now));
        }
        Due::Off(k) => {
            for vm in vms.iter_mut() {
                let which: Vec<usize> = (0..vm.probes.probes.len())
                    .filter(|&i| vm.probes.probes[i].level == k)
                    .collect();
                let r = vm.probes.turn(&which, false, vm.raised);
                note(vm.process.pid, r);
                retire_cycled(vm, linker, Some(k));
            }
        }
    }
    found
}

/// Removes and returns the elements of `v` that `f` accepts.
fn take_where<T>(v: &mut Vec<T>, f: impl Fn(&T) -> bool) -> Vec<T> {
    let (out, keep) = std::mem::take(v).into_iter().partition(|x| f(x));
    *v = keep;
    out
}

/// Turns off and retires `vm`'s cycled links of level `k` (`None`: all).
fn retire_cycled(vm: &mut Governed<'_>, linker: &mut Linker<'_, '_>, k: Option<Level>) {
    for (_, mut link) in take_where(&mut vm.links.cycled, |(level, _)| {
        k.is_none_or(|k| *level == k)
    }) {
        match switches::flip(linker.kernel, &mut link, false) {
            Ok(at) => vm.probes.set_linked(&link.columns, false, at),
            Err(e) => tracing::warn!("PID {}: {}", vm.process.pid, vmwatch_core::error::chain(&e)),
        }
        linker.switches.retire(linker.kernel, link);
    }
}

/// Makes `vm`'s exact link carry exactly its linked probes of level 0 (the
/// others are off until their turn).
pub fn sync_exact_links(vm: &mut Governed<'_>, linker: &mut Linker<'_, '_>) {
    // A turn-off that never came (the phase ended first) comes now.
    retire_cycled(vm, linker, None);
    let want = vm.probes.linked_at(0);
    let have = vm
        .links
        .exact
        .as_ref()
        .map(|l| l.columns.clone())
        .unwrap_or_default();
    if want == have {
        return;
    }
    let new = if want.is_empty() {
        None
    } else {
        match ProcessLinks::attach(linker.kernel, linker.switches, vm.binary, vm.process, &want) {
            Ok(link) => Some(link),
            Err(e) => {
                // The old link stays: its probes are counted, if more of
                // them than planned.
                tracing::warn!(
                    "PID {}: {}; its exactly counted probes stay as they were",
                    vm.process.pid,
                    vmwatch_core::error::chain(&e)
                );
                return;
            }
        }
    };
    // On before off: a hit in between may count twice, none is lost.
    let mut at = Instant::now();
    let mut new = new;
    if let Some(link) = new.as_mut() {
        match switches::flip(linker.kernel, link, true) {
            Ok(t) => at = t,
            Err(e) => {
                tracing::warn!("PID {}: {}", vm.process.pid, vmwatch_core::error::chain(&e));
                linker
                    .switches
                    .retire(linker.kernel, new.take().expect("just matched"));
                return;
            }
        }
    }
    if let Some(mut old) = std::mem::replace(&mut vm.links.exact, new) {
        if let Ok(t) = switches::flip(linker.kernel, &mut old, false) {
            at = t;
        }
        linker.switches.retire(linker.kernel, old);
    }
    let off: Vec<u32> = have
        .iter()
        .copied()
        .filter(|c| want.binary_search(c).is_err())
        .collect();
    vm.probes.set_linked(&want, true, at);
    vm.probes.set_linked(&off, false, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(n: usize, now: Instant) -> VmProbes {
        let attached: Vec<AttachedProbe> = (0..n)
            .map(|i| AttachedProbe {
                column: i as u32,
                semaphores: vec![i],
                nop5: true,
                tracked: false,
                extra_ns: 0.0,
            })
            .collect();
        VmProbes::new(&attached, &HitCost::flat(1000.0), now)
    }

    #[test]
    fn a_probe_tracked_for_seq_features_is_never_thinned() {
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        let attached: Vec<AttachedProbe> = (0..3)
            .map(|i| AttachedProbe {
                column: i,
                semaphores: vec![i as usize],
                nop5: true,
                tracked: i != 2,
                extra_ns: if i != 2 {
                    vmwatch_core::govern::TRACK_NS
                } else {
                    0.0
                },
            })
            .collect();
        let mut vm = VmProbes::new(&attached, &HitCost::flat(1000.0), t0);
        // Only the untracked probe is ever turned off.
        assert_eq!(vm.start_phase(t0, &[0, 0, 0], None, Some(0.01), w), [2]);
        // Probe 0 at 200,000/s (20% of a CPU), probe 2 at 20,000/s (2%):
        // the tracked one stays exact, and its cost thins the other more.
        let t1 = t0 + Duration::from_millis(500);
        let turn = vm.start_phase(t1, &[100_000, 5, 10_000], None, Some(0.01), w);
        assert_eq!(turn, [2]);
        assert_eq!((vm.probes[0].level, vm.probes[1].level), (0, 0));
        assert_eq!(vm.probes[0].gate, Gate::Exact);
        // Charged its tracking too: 1,000 + 25 ns a hit.
        let demand = vm.probes[0].demand;
        assert!((demand - 200_000.0 * 1025.0).abs() < 1.0, "{demand}");
        assert!(vm.probes[2].level > 0);
        let mut counts = vec![200_000, 10, 20_000];
        let cost = vm.close_window(t0 + w, &mut counts, 0);
        assert_eq!(&counts[..2], [200_000, 10]);
        assert!(cost.sampled.iter().all(|&(c, _)| c == 2), "{cost:?}");
    }

    #[test]
    fn an_exact_window_is_not_marked() {
        let t0 = Instant::now();
        let mut vm = probes(2, t0);
        let mut counts = vec![10, 20];
        let cost = vm.close_window(t0 + Duration::from_secs(2), &mut counts, 0);
        assert_eq!(counts, vec![10, 20]);
        assert!(cost.sampled.is_empty());
        assert_eq!(cost.hits, 30);
        assert!((cost.cpu_ns - 30_000.0).abs() < 1e-6);
    }

    #[test]
    fn a_probe_on_half_the_window_is_doubled_and_marked() {
        let t0 = Instant::now();
        let mut vm = probes(2, t0);
        vm.probes[1].account(t0 + Duration::from_secs(1));
        vm.probes[1].on = false;
        // Not yet known to be gated: counted as it is.
        let mut counts = vec![10, 20];
        vm.close_window(t0 + Duration::from_secs(2), &mut counts, 0);
        assert_eq!(counts, vec![10, 20]);
        let t0 = t0 + Duration::from_secs(2);
        vm.probes[1].gated = true;
        vm.probes[1].on = true;
        vm.probes[1].on_since = t0;
        vm.probes[1].account(t0 + Duration::from_secs(1));
        vm.probes[1].on = false;
        let mut counts = vec![10, 20];
        let cost = vm.close_window(t0 + Duration::from_secs(2), &mut counts, 0);
        assert_eq!(counts, vec![10, 40]);
        assert_eq!(cost.sampled.len(), 1);
        assert_eq!(cost.sampled[0].0, 1);
        assert!((cost.sampled[0].1 - 0.5).abs() < 1e-9);
        // The cost is what was trapped, not the estimate.
        assert_eq!(cost.hits, 30);
    }

    /// A gated probe of level 8, off from `t0` (a phase start, its
    /// cumulative count 0), its turn-off done once it had counted `off_at`.
    fn cycled_from(t0: Instant, off_at: u64) -> VmProbes {
        let mut vm = probes(1, t0);
        vm.start_phase(t0, &[0], None, Some(0.01), Duration::from_secs(2));
        let p = &mut vm.probes[0];
        p.account(t0);
        (p.on, p.gated, p.level) = (false, true, 8);
        p.off_base = Some((off_at, t0));
        vm
    }

    /// The window of a probe off from its count `off_at` on, turned on at
    /// 0.5 s (its count then `on_at`) for 0.1 s (a 0.05 fraction), with
    /// `total` hits in all: its estimated count and cost.
    fn window_turned_on_once(off_at: u64, on_at: u64, total: u64) -> (u64, WindowCost) {
        let t0 = Instant::now();
        let mut vm = cycled_from(t0, off_at);
        let ms = Duration::from_millis;
        on_for(&mut vm, t0 + ms(500), on_at, ms(100));
        let mut counts = vec![total];
        let cost = vm.close_window(t0 + Duration::from_secs(2), &mut counts, 0);
        (counts[0], cost)
    }

    /// Turns `vm`'s probe on at `on` (its cumulative count then `cum`) for
    /// `len`.
    fn on_for(vm: &mut VmProbes, on: Instant, cum: u64, len: Duration) {
        vm.turning_on(&[cum], on);
        let p = &mut vm.probes[0];
        (p.on, p.on_since) = (true, on);
        p.account(on + len);
        p.on = false;
    }

    #[test]
    fn a_bursty_probe_its_semaphore_does_not_gate_is_found_from_its_rate_after_turn_ons() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let w = Duration::from_secs(2);
        let mut vm = probes(1, t0);
        // An exact phase: 250 hits in 250 ms.
        vm.start_phase(t0, &[0], None, Some(0.01), w);
        // Cycled from t1: off, its off-time missing every burst.
        let off_from = |vm: &mut VmProbes, at: Instant, cum: u64| {
            vm.start_phase(at, &[cum], None, Some(0.01), w);
            let p = &mut vm.probes[0];
            p.account(at);
            (p.on, p.level) = (false, 8);
            vm.set_off_base(&[cum], at);
        };
        let t1 = t0 + ms(250);
        off_from(&mut vm, t1, 250);
        assert!(vm.find_ungated(t1 + ms(100), &[250]).is_empty());
        assert!(
            !vm.probes[0].gated,
            "100 hits expected while off: not known yet"
        );
        on_for(&mut vm, t1 + ms(100), 250, ms(1));
        // It never turned off: 250 hits after its turn-on, 100 of the next
        // phase's while off. Divided by its on-time (1 ms), its rate would
        // make 100 hits while off look like races.
        let t2 = t1 + ms(250);
        off_from(&mut vm, t2, 500);
        assert_eq!(vm.find_ungated(t2 + ms(100), &[600]), [0]);
        assert_eq!(vm.probes[0].gate, Gate::Unswitched);
    }

    #[test]
    fn hits_while_off_before_the_turn_on_are_not_scaled() {
        // 30 hits leak while off, then 100 while on.
        let (count, cost) = window_turned_on_once(0, 30, 130);
        assert_eq!(count, 30 + 2000);
        let (col, f) = cost.sampled[0];
        assert_eq!(col, 0);
        // Counted over estimated, as the rows define the fraction.
        assert!((f - 130.0 / 2030.0).abs() < 1e-9, "fraction {f}");
        assert_eq!(cost.hits, 130);
    }

    #[test]
    fn hits_while_being_turned_off_are_scaled_as_on() {
        // 50 hits came before its turn-off took effect: on, not off.
        let (count, _) = window_turned_on_once(50, 50, 150);
        assert_eq!(count, 3000);
    }

    #[test]
    fn an_estimate_rounded_to_the_count_is_not_marked() {
        let t0 = Instant::now();
        let mut vm = cycled_from(t0, 0);
        // On 99.85% of the window: 1 / 0.9985 rounds to 1.
        on_for(&mut vm, t0, 0, Duration::from_micros(1_997_000));
        let mut counts = vec![1];
        let cost = vm.close_window(t0 + Duration::from_secs(2), &mut counts, 0);
        assert_eq!(counts, [1]);
        assert!(cost.sampled.is_empty(), "{cost:?}");
    }

    #[test]
    fn the_hits_of_a_phase_never_on_are_not_scaled() {
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        let mut vm = cycled_from(t0, 0);
        on_for(
            &mut vm,
            t0 + Duration::from_millis(100),
            0,
            Duration::from_millis(100),
        );
        // The second phase: never on (a lost wake-up), 20 hits leak.
        let t1 = t0 + Duration::from_secs(1);
        vm.start_phase(t1, &[100], None, Some(0.01), w);
        vm.probes[0].level = 8;
        let mut counts = vec![120];
        vm.close_window(t0 + w, &mut counts, 0);
        assert_eq!(counts, [20 + 2000]);
        // Nothing on at all: counted as it is, and not marked.
        let t2 = t0 + w;
        vm.start_phase(t2, &[120], None, Some(0.01), w);
        vm.probes[0].level = 8;
        let mut counts = vec![7];
        let cost = vm.close_window(t2 + w, &mut counts, 0);
        assert_eq!(counts, [7]);
        assert!(cost.sampled.is_empty(), "{cost:?}");
    }

    #[test]
    fn a_phase_thins_the_hot_probe_only() {
        let t0 = Instant::now();
        let mut vm = probes(3, t0);
        let t1 = t0 + Duration::from_millis(500);
        let w = Duration::from_secs(2);
        assert!(vm.start_phase(t0, &[0, 0, 0], None, Some(0.01), w).len() == 3);
        // 1%: 10,000 hits/s at 1 us. Probe 2 ran at 200,000/s.
        vm.start_phase(t1, &[5, 50, 100_000], None, Some(0.01), w);
        assert_eq!(vm.probes[0].level, 0);
        assert_eq!(vm.probes[1].level, 0);
        assert!(vm.probes[2].level > 0);
        // The first phase spent 100 ms of CPU, more than the window's 20:
        // what is left of the window has the floor, a quarter of the budget.
        assert!(200_000.0 * fraction(vm.probes[2].level) <= 0.25 * 9000.0);
        assert!(200_000.0 * fraction(vm.probes[2].level) >= 0.25 * 9000.0 / 2.0);
    }

    #[test]
    fn an_overspent_window_is_paid_back_by_the_next() {
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let mut vm = probes(1, t0);
        vm.start_phase(t0, &[0], None, Some(0.01), w);
        // 30,000 hits at 1 us: 30 ms, three windows' budget of 10 ms.
        let t1 = t0 + w;
        let cost = vm.close_window(t1, &mut [30_000], 0);
        assert_eq!(cost.hits, 30_000);
        assert!(
            (vm.debt_ns - 10e6).abs() < 1.0,
            "debt capped at one window: {}",
            vm.debt_ns
        );
        // The next window starts paying it back: a quarter of its budget.
        vm.start_phase(t1, &[30_000], None, Some(0.01), w);
        vm.start_phase(t1 + w / 4, &[37_500], None, Some(0.01), w);
        assert!(30_000.0 * fraction(vm.probes[0].level) <= 0.25 * 9000.0);
    }

    #[test]
    fn a_hot_probe_no_semaphore_gates_is_split_off_with_a_power_of_two() {
        let t0 = Instant::now();
        let attached = [
            AttachedProbe {
                column: 0,
                semaphores: vec![0],
                nop5: true,
                tracked: false,
                extra_ns: 0.0,
            },
            // No semaphore: only links can thin it.
            AttachedProbe {
                column: 1,
                semaphores: vec![],
                nop5: true,
                tracked: false,
                extra_ns: 0.0,
            },
        ];
        let mut vm = VmProbes::new(&attached, &HitCost::flat(1000.0), t0);
        let w = Duration::from_secs(2);
        // Not thinned yet: exact.
        vm.start_phase(t0, &[0, 0], None, Some(0.01), w);
        assert!(vm.to_split().is_empty());
        let t1 = t0 + Duration::from_millis(500);
        // Semaphore probes are the only ones turned through semaphores.
        let turned = vm.start_phase(t1, &[10, 100_000], None, Some(0.01), w);
        assert_eq!(turned, vec![0]);
        assert_eq!(vm.to_split(), vec![1]);
        vm.linked(&[1]);
        assert_eq!(vm.probes[1].gate, Gate::Links);
        assert!(vm.probes[1].gated, "links gate what they count");
        let k = vm.probes[1].level;
        assert!(k > 0 && k % STEPS == 0, "level {k}");
        assert_eq!(vm.linked_at(k), vec![1]);
        assert!(vm.linked_at(0).is_empty());
        // Switched off at t2: on 0.6 s of the window's 2.5.
        let t2 = t1 + Duration::from_millis(100);
        vm.set_linked(&[1], false, t2);
        let mut counts = [10, 600];
        let cost = vm.close_window(t1 + Duration::from_secs(2), &mut counts, 50);
        let (col, f) = cost.sampled[0];
        assert_eq!(col, 1);
        assert!((f - 0.24).abs() < 1e-6, "fraction {f}");
        assert_eq!(counts, [10, 2500]);
        // Switched-off hits are paid for: charged, not counted.
        assert_eq!((cost.hits, cost.dark), (660, 50));
    }

    #[test]
    fn the_schedule_turns_on_then_off_by_level() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(2), t0);
        let levels: BTreeSet<Level> = [4, 8].into_iter().collect();
        s.plan(t0, &levels);
        let on = s.on_at.unwrap();
        assert!(on >= t0 && on <= t0 + Duration::from_millis(250));
        assert_eq!(s.pop_due(on), Some(Due::On));
        let end = t0 + Duration::from_millis(500);
        let mut offs = Vec::new();
        while let Some(d) = s.pop_due(end) {
            offs.push(d);
            if d == Due::Phase {
                break;
            }
        }
        assert_eq!(offs, vec![Due::Off(8), Due::Off(4), Due::Phase]);
    }
}
