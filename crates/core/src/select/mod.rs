//! Feature selection (`vmwatch select`): for each stress scenario, LDA
//! against the baseline ([`lda`]) picks a greedy subset, optionally within a
//! cost budget ([`budget`]); the union of the subsets is the selection.

pub mod budget;
pub mod lda;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use lda::*;

use crate::dataset::Table;
use crate::error::{Error, Result};
use crate::features::{FeatureList, Source, SEQ};
use budget::{Charge, CostModel};

/// How `vmwatch select` runs.
#[derive(Debug, Clone)]
pub struct SelectConfig {
    /// Features in each pair's greedy subset.
    pub top: usize,
    pub transform: Transform,
    /// Only features of these sources (empty: any).
    pub sources: Vec<Source>,
    /// Keep the selection's cost ([`budget`]'s model) within this percent
    /// of one CPU.
    pub budget: Option<f64>,
    /// CPU time of one probe hit, ns.
    pub hit_cost_ns: f64,
}

/// One baseline-vs-stress comparison.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The stress scenario (its label, else its file's stem; with the file
    /// added when two pairs would share a name).
    pub name: String,
    pub path: PathBuf,
    pub rows: usize,
    /// Features nonzero in at least one of the two files.
    pub features: Vec<String>,
    pub scores: PairScores,
}

/// The outcome of [`select`].
#[derive(Debug, Clone)]
pub struct Selection {
    pub pairs: Vec<Pair>,
    /// The union of the pairs' greedy subsets, in pair order then
    /// selection order.
    pub union: Vec<String>,
    /// The probes the files tracked, when the union has `seq:` features
    /// (their meaning depends on it; a feature list keeps it in `track:`
    /// lines); else empty.
    pub tracked: Vec<String>,
    pub costs: CostModel,
}

impl Selection {
    /// The union as a feature list, with its tracked set.
    pub fn list(&self) -> FeatureList {
        FeatureList {
            features: self.union.clone(),
            track: self.tracked.clone(),
        }
    }
}

/// Reads a dataset for selection: it must have at least `min_rows` rows.
pub fn read(path: &Path, min_rows: usize) -> Result<Table> {
    let t = Table::read(path)?;
    if t.len() < min_rows {
        return Err(Error::Invalid(format!(
            "{} has {} rows; select needs at least {min_rows} per file (--min-rows)",
            path.display(),
            t.len()
        )));
    }
    Ok(t)
}

/// Scores every stress table against the baseline and unites the greedy
/// subsets. With a budget, a later pair gets the work the features chosen
/// so far need for free and spends only what is left.
pub fn select(
    baseline: (&Path, &Table),
    stresses: &[(PathBuf, Table)],
    config: &SelectConfig,
) -> Result<Selection> {
    let (baseline_path, baseline) = baseline;
    let mut tables = vec![baseline];
    tables.extend(stresses.iter().map(|(_, t)| t));
    let costs = CostModel::new(&tables, config.hit_cost_ns);
    let tracked = baseline.tracked();
    let set = |t: &[String]| t.iter().cloned().collect::<HashSet<String>>();
    for (path, stress) in stresses {
        // The same probes, in whatever order --track named them.
        if set(&stress.tracked()) != set(&tracked) {
            return Err(Error::Invalid(format!(
                "{} tracked the probes [{}] for seq: transitions but {} tracked [{}]: record \
                 them with the same --track",
                path.display(),
                stress.tracked().join(", "),
                baseline_path.display(),
                tracked.join(", ")
            )));
        }
    }
    let mut union: Vec<String> = Vec::new();
    let mut chosen: HashSet<String> = HashSet::new();
    let mut paid: HashSet<Charge> = HashSet::new();
    let mut spent = 0.0;
    let mut pairs = Vec::new();
    for (path, stress) in stresses {
        let features = Table::nonzero_features(&[baseline, stress], &config.sources);
        // This pair's unpaid charges, numbered.
        let mut index: HashMap<Charge, usize> = HashMap::new();
        let mut charges: Vec<f64> = Vec::new();
        let needs: Vec<Vec<usize>> = features
            .iter()
            .map(|f| {
                Charge::needed_with(f, &tracked)
                    .into_iter()
                    .filter(|c| !paid.contains(c))
                    .map(|c| {
                        let next = charges.len();
                        *index.entry(c.clone()).or_insert_with(|| {
                            charges.push(costs.percent(&c));
                            next
                        })
                    })
                    .collect()
            })
            .collect();
        let budget = config.budget.map(|limit| Budget {
            needs: &needs,
            charges: &charges,
            limit: limit - spent,
        });
        let scores = score_pair(
            baseline.project(&features).view(),
            stress.project(&features).view(),
            config.top,
            config.transform,
            budget,
        )
        .map_err(|e| {
            Error::Invalid(format!(
                "scoring {} against {}: {e}",
                path.display(),
                baseline_path.display()
            ))
        })?;
        for step in &scores.greedy {
            let f = &features[step.feature];
            if chosen.insert(f.clone()) {
                for c in Charge::needed_with(f, &tracked) {
                    if !paid.contains(&c) {
                        spent += costs.percent(&c);
                        paid.insert(c);
                    }
                }
                union.push(f.clone());
            }
        }
        pairs.push(Pair {
            name: stress.scenario_name(path),
            path: path.clone(),
            rows: stress.len(),
            features,
            scores,
        });
    }
    disambiguate(&mut pairs);
    let seq = union.iter().any(|f| f.starts_with(SEQ));
    Ok(Selection {
        pairs,
        union,
        tracked: if seq { tracked } else { Vec::new() },
        costs,
    })
}

/// Two files with the same label get their file names added.
fn disambiguate(pairs: &mut [Pair]) {
    let names: Vec<String> = pairs.iter().map(|p| p.name.clone()).collect();
    for p in pairs.iter_mut() {
        if names.iter().filter(|n| **n == p.name).count() > 1 {
            p.name = format!("{} ({})", p.name, p.path.display());
        }
    }
}
