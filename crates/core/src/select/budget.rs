//! What counting a probe costs the VM: its hit rate times the CPU time of
//! one hit, as a share of one CPU (`select --budget`).

use std::collections::HashMap;

use crate::dataset::Table;
use crate::features::QEMU;

/// Each `qemu:` probe's highest mean hit rate in some recordings, and the
/// cost of one hit.
#[derive(Debug, Clone)]
pub struct ProbeCosts {
    peak_rate: HashMap<String, f64>,
    hit_cost_ns: f64,
}

/// What a set of features costs by [`ProbeCosts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// `qemu:` probes among the features (the others are not charged).
    pub probes: usize,
    /// Their hits per second, summed.
    pub rate: f64,
    /// Percent of one CPU.
    pub percent: f64,
}

impl ProbeCosts {
    /// Charges every `qemu:` probe of `tables` its highest mean rate in any
    /// of them.
    pub fn new(tables: &[&Table], hit_cost_ns: f64) -> Self {
        let mut peak_rate: HashMap<String, f64> = HashMap::new();
        for t in tables {
            let probes: Vec<String> = t
                .features
                .iter()
                .filter(|f| f.starts_with(QEMU))
                .cloned()
                .collect();
            for (f, r) in probes.iter().zip(t.mean_rates(&probes)) {
                let peak = peak_rate.entry(f.clone()).or_insert(0.0);
                *peak = peak.max(r);
            }
        }
        Self {
            peak_rate,
            hit_cost_ns,
        }
    }

    pub fn hit_cost_ns(&self) -> f64 {
        self.hit_cost_ns
    }

    /// Hits per second of `feature` (0 for one that is not a probe here).
    pub fn rate(&self, feature: &str) -> f64 {
        self.peak_rate.get(feature).copied().unwrap_or(0.0)
    }

    /// Percent of one CPU that counting `feature` costs.
    pub fn percent(&self, feature: &str) -> f64 {
        self.rate(feature) * self.hit_cost_ns * 1e-9 * 100.0
    }

    /// What counting all of `features` costs.
    pub fn of(&self, features: &[String]) -> Cost {
        let probes: Vec<&String> = features.iter().filter(|f| f.starts_with(QEMU)).collect();
        Cost {
            probes: probes.len(),
            rate: probes.iter().map(|f| self.rate(f)).sum(),
            percent: probes.iter().map(|f| self.percent(f)).sum(),
        }
    }
}
