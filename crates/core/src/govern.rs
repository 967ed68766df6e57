//! The cost governor's arithmetic (DESIGN.md, "Cost governor"): which of a
//! VM's probes are counted exactly and which are duty-cycled, for how long
//! each is on, and what a duty-cycled count stands for. BPF-free: the
//! collector applies a [`Plan`] through QEMU's semaphores, and tests and
//! benchmarks use the same functions.
//!
//! The plan is max-min fair: every probe may cost the same share of the
//! budget, cheap probes take less than that share and are exact, the rest
//! split what is left and are on for `cap / rate` of the time. A flood on
//! one probe thins that probe, not the others.

/// The probe cost budget when none is given, in percent of one CPU
/// (DESIGN.md: `--budget`, default 1%).
pub const DEFAULT_BUDGET_PERCENT: f64 = 1.0;

/// A budget as given (`--budget`, the agent's `budget`): a percentage of
/// one CPU (e.g. `1`, `0.5`, `2%`), or `none`; the share as a fraction.
pub fn parse_budget(s: &str) -> Result<Option<f64>, String> {
    if s == "none" {
        return Ok(None);
    }
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p.is_finite() && p > 0.0 && p <= 100.0 => Ok(Some(p / 100.0)),
        _ => Err(format!(
            "`{s}` is not a percentage of one CPU above 0 and at most 100, or `none`"
        )),
    }
}

/// CPU time one counted hit costs the traced thread, by kind of site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitCost {
    /// On a 5-byte-nop site (the kernel's optimized uprobe), in ns.
    pub nop5_ns: f64,
    /// On any other site (an int3 trap every hit), in ns.
    pub trap_ns: f64,
}

impl HitCost {
    /// One figure for every kind of site (`--hit-cost`).
    pub fn flat(ns: f64) -> Self {
        Self {
            nop5_ns: ns,
            trap_ns: ns,
        }
    }

    /// The cost of a probe whose sites are all 5-byte nops or not.
    pub fn of(&self, nop5: bool) -> f64 {
        if nop5 {
            self.nop5_ns
        } else {
            self.trap_ns
        }
    }
}

/// What tracking a hit of a probe for `seq:` features adds to counting it,
/// ns (`cargo bench --bench collector -- seq`: +19 to +32).
pub const TRACK_NS: f64 = 25.0;

/// What reading a probe's arguments for `arg:` features adds per hit, ns
/// (`cargo bench --bench collector -- arg`: +101, +102).
pub const ARGS_NS: f64 = 100.0;

/// The plan keeps this share of the budget free: rates change between the
/// phase they were measured in and the phase they are planned for.
pub const HEADROOM: f64 = 0.9;

/// Steps per halving of the on-fraction: fractions are `2^(-k/STEPS)`, so
/// probes share the instants their sites turn off (one wake-up for each
/// fraction in use, whatever the number of probes and VMs).
pub const STEPS: u32 = 4;

/// The smallest on-fraction (about 0.5 ms of a 500-ms phase): below it a
/// phase's count says too little.
pub const MIN_FRACTION: f64 = 1.0 / 1024.0;

/// Quantization level `k` of fraction `2^(-k/STEPS)`; 0 is exact.
pub type Level = u32;

/// The deepest level (at [`MIN_FRACTION`]).
pub const MAX_LEVEL: Level = 10 * STEPS;

/// The fraction of level `k`.
pub fn fraction(k: Level) -> f64 {
    (-(f64::from(k.min(MAX_LEVEL))) / f64::from(STEPS)).exp2()
}

/// The level whose fraction is the largest not above `f` (rounding down
/// keeps the plan within budget).
pub fn level_of(f: f64) -> Level {
    if f.is_nan() || f >= 1.0 {
        return 0;
    }
    if f <= MIN_FRACTION {
        return MAX_LEVEL;
    }
    let k = (-f.log2() * f64::from(STEPS)).ceil() as Level;
    // Guard the float edge: fraction(k) must not exceed f.
    let k = if fraction(k) > f * (1.0 + 1e-12) {
        k + 1
    } else {
        k
    };
    k.min(MAX_LEVEL)
}

/// One phase's plan for one VM: a level per probe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub levels: Vec<Level>,
}

impl Plan {
    /// Whether every probe is exact.
    pub fn is_exact(&self) -> bool {
        self.levels.iter().all(|&k| k == 0)
    }
}

/// Plans the next phase. `demand[i]` is what probe `i` would cost counted
/// exactly (its hit rate as last measured times its cost per hit: ns of
/// CPU per second); `fixed` is the demand of what cannot be thinned
/// (probes without a semaphore, or whose semaphore another tracer holds);
/// `share` the budget (0.01 = 1% of one CPU).
pub fn plan(demand: &[f64], fixed: f64, share: f64) -> Plan {
    let rates = demand;
    let fixed = if fixed.is_finite() {
        fixed.max(0.0)
    } else {
        0.0
    };
    let capacity = (share * 1e9 * HEADROOM - fixed).max(0.0);
    let total: f64 = rates.iter().filter(|r| r.is_finite()).sum();
    let mut levels = vec![0; rates.len()];
    if total <= capacity {
        return Plan { levels };
    }
    let mut order: Vec<usize> = (0..rates.len()).collect();
    order.sort_by(|&a, &b| rate(rates[a]).total_cmp(&rate(rates[b])));
    let mut left = capacity;
    for (n, &i) in order.iter().enumerate() {
        let share = left / (order.len() - n) as f64;
        let r = rate(rates[i]);
        if r <= share {
            left -= r;
            continue;
        }
        // `share` is the cap of every hotter probe too.
        for &j in &order[n..] {
            levels[j] = level_of(share / rate(rates[j]));
        }
        break;
    }
    Plan { levels }
}

/// A rate as the plan uses it (a NaN or negative rate counts as 0).
fn rate(r: f64) -> f64 {
    if r.is_finite() && r > 0.0 {
        r
    } else if r == f64::INFINITY {
        f64::MAX
    } else {
        0.0
    }
}

/// The window total a count stands for, counted during `fraction` of the
/// window (1: exact).
pub fn estimate(counted: u64, fraction: f64) -> u64 {
    if fraction >= 1.0 || counted == 0 {
        return counted;
    }
    if fraction.is_nan() || fraction <= 0.0 {
        return 0;
    }
    (counted as f64 / fraction).round() as u64
}

/// What a VM's probes trapped, as `record`'s summary says it: hits per
/// second, and those of them on links being switched (paid for, not
/// counted). One definition for the line and for whoever reads it back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trapped {
    pub per_s: f64,
    pub dark_per_s: f64,
}

const TRAPPED: &str = " hits/s trapped (";

impl std::fmt::Display for Trapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}{TRAPPED}{:.0}/s on links being switched, not counted)",
            self.per_s, self.dark_per_s
        )
    }
}

impl Trapped {
    /// The first summary in `log`, if any.
    pub fn find(log: &str) -> Option<Trapped> {
        let (before, after) = log.lines().find_map(|l| l.split_once(TRAPPED))?;
        Some(Trapped {
            per_s: before.rsplit(' ').next()?.parse().ok()?,
            dark_per_s: after.split("/s").next()?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 1% of a CPU at 1 us per hit: 10,000 hits/s, 90% of that planned.
    const B: f64 = 0.01;

    /// Hits/s at 1 us per hit, as demand (ns/s).
    fn demand(rates: &[f64]) -> Vec<f64> {
        rates.iter().map(|r| r * 1000.0).collect()
    }

    /// Hits/s the plan lets through.
    fn cost(rates: &[f64], p: &Plan) -> f64 {
        rates
            .iter()
            .zip(&p.levels)
            .map(|(r, &k)| r * fraction(k))
            .sum()
    }

    #[test]
    fn levels_round_down() {
        assert_eq!(level_of(1.0), 0);
        assert_eq!(level_of(2.0), 0);
        assert_eq!(level_of(0.5), STEPS);
        assert_eq!(level_of(0.0), MAX_LEVEL);
        assert_eq!(level_of(f64::NAN), 0);
        for f in [0.9, 0.7, 0.33, 0.1, 0.01, 0.003, 0.0011] {
            let k = level_of(f);
            assert!(fraction(k) <= f, "{f}: {}", fraction(k));
            assert!(fraction(k) > f / 2f64.powf(1.0 / f64::from(STEPS)) * 0.999);
        }
        assert_eq!(fraction(MAX_LEVEL), MIN_FRACTION);
    }

    #[test]
    fn within_budget_everything_is_exact() {
        // 10,000 hits/s pay for 1% at 1 us; 90% of that is planned.
        let rates = [100.0, 4000.0, 4000.0];
        assert!(plan(&demand(&rates), 0.0, B).is_exact());
    }

    #[test]
    fn hot_probes_are_thinned_cheap_ones_stay_exact() {
        let rates = [10.0, 200.0, 50_000.0, 1_000_000.0, 0.0];
        let p = plan(&demand(&rates), 0.0, B);
        assert_eq!(p.levels[0], 0);
        assert_eq!(p.levels[1], 0);
        assert_eq!(p.levels[4], 0);
        assert!(p.levels[2] > 0 && p.levels[3] > p.levels[2]);
        let c = cost(&rates, &p);
        assert!(c <= 9000.0, "{c}");
        // Rounding down loses at most one step of the two hot probes' share.
        assert!(
            c >= 9000.0 / 2f64.powf(1.0 / f64::from(STEPS)) * 0.99,
            "{c}"
        );
        // Both hot probes get the same cap.
        let caps: Vec<f64> = [2, 3]
            .iter()
            .map(|&i| rates[i] * fraction(p.levels[i]))
            .collect();
        assert!(
            (caps[0] / caps[1]).max(caps[1] / caps[0]) < 2f64.powf(1.0 / f64::from(STEPS)) * 1.01
        );
    }

    #[test]
    fn fixed_cost_takes_its_share_first() {
        let rates = [5000.0];
        assert!(plan(&demand(&rates), 0.0, B).is_exact());
        let p = plan(&demand(&rates), 8000.0 * 1000.0, B);
        assert!(p.levels[0] > 0);
        assert!(rates[0] * fraction(p.levels[0]) <= 1000.0);
        // Nothing left: the floor.
        assert_eq!(plan(&demand(&rates), 1e12, B).levels[0], MAX_LEVEL);
    }

    #[test]
    fn odd_rates_do_not_panic() {
        let rates = [f64::NAN, f64::INFINITY, -5.0, 1e300];
        let p = plan(&rates, f64::NAN, B);
        assert_eq!(p.levels.len(), 4);
        assert_eq!(p.levels[0], 0);
        assert_eq!(p.levels[2], 0);
        assert_eq!(p.levels[1], MAX_LEVEL);
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate(100, 1.0), 100);
        assert_eq!(estimate(100, 0.25), 400);
        assert_eq!(estimate(0, 0.01), 0);
        assert_eq!(estimate(3, 0.0), 0);
        assert_eq!(estimate(1, 0.3), 3);
    }
}
