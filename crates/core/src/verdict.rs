//! Verdicts: a window's decision value becomes a raw verdict (negative =
//! outside the normal region), K-of-N smoothing per VM turns raw verdicts
//! into the flag an operator sees, and [`Verdict`] is the record `detect`,
//! `monitor` and the agent write, one JSON object per line.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use ndarray::Array2;

use crate::dataset::Table;
use crate::error::{Error, Result};
use crate::features::Projection;
use crate::model::{Model, Smoothing};

/// K-of-N smoothing of each VM's windows in time order, by any key that
/// tells VMs apart (a PID live, a (file, PID) offline).
#[derive(Debug, Clone)]
pub struct Smoother<K> {
    smoothing: Smoothing,
    history: HashMap<K, VecDeque<bool>>,
}

impl<K: Hash + Eq> Smoother<K> {
    pub fn new(smoothing: Smoothing) -> Self {
        Self {
            smoothing,
            history: HashMap::new(),
        }
    }

    pub fn smoothing(&self) -> Smoothing {
        self.smoothing
    }

    /// Adds `key`'s next window, raw-anomalous or not; returns whether the
    /// VM is flagged after it.
    pub fn push(&mut self, key: K, raw_anomalous: bool) -> bool {
        let n = self.smoothing.n as usize;
        let h = self.history.entry(key).or_default();
        h.push_back(raw_anomalous);
        while h.len() > n {
            h.pop_front();
        }
        h.iter().filter(|a| **a).count() >= self.smoothing.k as usize
    }

    /// Drops `key`'s history (the VM is gone).
    pub fn forget(&mut self, key: &K) {
        self.history.remove(key);
    }
}

/// Whether a decision value is outside the normal region.
pub fn is_outlier(score: f64) -> bool {
    score < 0.0
}

/// A model applied to windows whose counts come in some columns' order:
/// each row's decision value, then its VM's K-of-N smoothed verdict. What
/// `detect`, `monitor` and the agent share.
#[derive(Debug)]
pub struct Judge<K> {
    model: Model,
    projection: Projection,
    smoother: Smoother<K>,
}

/// Which of a model's features one VM's counts lack (they are read as
/// zero), and which of those the model relies on ([`Model::relies_on`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Model features the VM's counts lack, in the model's order.
    pub missing: Vec<String>,
    /// Those of `missing` the model relies on: judged without them, the
    /// VM's verdicts are not the model's.
    pub relied: Vec<String>,
    /// How many features the model has.
    pub of: usize,
}

impl Coverage {
    /// Whether the VM's counts have every feature the model relies on.
    pub fn is_usable(&self) -> bool {
        self.relied.is_empty()
    }

    /// What a warning says about it, e.g. `its QEMU lacks 3 of the model's
    /// 10 features, read as zero (qemu:a, qemu:b, qemu:c); the model relies
    /// on 1 of them (qemu:a)`; `None` when nothing is missing.
    pub fn describe(&self) -> Option<String> {
        if self.missing.is_empty() {
            return None;
        }
        let mut out = format!(
            "its QEMU lacks {} of the model's {} features, read as zero ({})",
            self.missing.len(),
            self.of,
            crate::error::first_few(&self.missing, 5)
        );
        if self.relied.is_empty() {
            out.push_str(
                "; the model relies on none of them (they were zero in every training window)",
            );
        } else {
            out.push_str(&format!(
                "; the model relies on {} of them ({})",
                self.relied.len(),
                crate::error::first_few(&self.relied, 5)
            ));
        }
        Some(out)
    }
}

impl<K: Hash + Eq> Judge<K> {
    /// A judge for rows of `columns`. Model features the columns lack are
    /// read as zero ([`Judge::missing`] says how many, [`Judge::coverage`]
    /// which, for one VM); none present at all is an error that names the
    /// likely mistake.
    pub fn new(model: Model, columns: &[String], smoothing: Smoothing, what: &str) -> Result<Self> {
        let projection = covering(&model, columns, what, false)?;
        Ok(Self {
            model,
            projection,
            smoother: Smoother::new(smoothing),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Model features the columns lack (read as zero).
    pub fn missing(&self) -> usize {
        self.projection.missing()
    }

    /// The model features one VM's rows lack: those the columns lack, and
    /// those in `lacking`, the (sorted) columns the VM cannot count (its
    /// QEMU has no such probe: they stay zero).
    pub fn coverage(&self, lacking: &[usize]) -> Coverage {
        let mut out = Coverage {
            of: self.model.features.len(),
            ..Coverage::default()
        };
        for (j, col) in self.projection.columns().iter().enumerate() {
            let absent = col.is_none_or(|c| lacking.binary_search(&c).is_ok());
            if absent {
                let name = &self.model.features[j];
                out.missing.push(name.clone());
                if self.model.relies_on(j) {
                    out.relied.push(name.clone());
                }
            }
        }
        out
    }

    /// How many of the model's features are among the `sampled` columns
    /// of a row (estimated counts: see [`crate::dataset::SAMPLED`]).
    pub fn estimated(&self, sampled: &[(usize, f64)]) -> usize {
        self.projection
            .columns()
            .iter()
            .flatten()
            .filter(|c| sampled.iter().any(|(s, _)| s == *c))
            .count()
    }

    /// Scores rows of counts, one per VM key, in time order per key;
    /// returns each row's (decision value, smoothed verdict).
    pub fn judge<'a>(
        &mut self,
        rows: impl ExactSizeIterator<Item = (K, &'a [u64])>,
    ) -> Vec<(f64, bool)> {
        let d = self.model.features.len();
        let mut x = Array2::<f64>::zeros((rows.len(), d));
        let mut keys = Vec::with_capacity(x.nrows());
        for (r, (key, counts)) in rows.enumerate() {
            let row = x.row_mut(r).into_slice().expect("rows are contiguous");
            self.projection.row(counts, row);
            keys.push(key);
        }
        let scores = self.model.decisions(x.view());
        keys.into_iter()
            .zip(scores)
            .map(|(key, score)| (score, self.smoother.push(key, is_outlier(score))))
            .collect()
    }

    /// Drops a VM's smoothing history (it is gone).
    pub fn forget(&mut self, key: &K) {
        self.smoother.forget(key);
    }
}

/// Where `model`'s features are among `columns` (of `what`, for messages):
/// an error when none is, with `warn` a warning when some are not.
fn covering(model: &Model, columns: &[String], what: &str, warn: bool) -> Result<Projection> {
    let projection = Projection::new(columns, &model.features);
    let missing = projection.missing();
    if missing == model.features.len() {
        return Err(Error::Invalid(format!(
            "{what} has none of the model's {} features (the model counts {}…): wrong model or \
             wrong source?",
            model.features.len(),
            model.features[0]
        )));
    }
    if missing > 0 && warn {
        let absent: Vec<String> = projection
            .columns()
            .iter()
            .zip(&model.features)
            .filter(|(c, _)| c.is_none())
            .map(|(_, f)| f.clone())
            .collect();
        tracing::warn!(
            "{what}: {missing} of the model's features are absent and read as zero ({})",
            crate::error::first_few(&absent, 5)
        );
    }
    Ok(projection)
}

/// Verdicts for every row of a recorded table (`what`, for messages), each
/// VM process's windows smoothed in window order; rows keep the table's
/// order.
pub fn judge_table(
    model: &Model,
    table: &Table,
    smoothing: Smoothing,
    what: &str,
) -> Result<Vec<Verdict>> {
    covering(model, &table.features, what, true)?;
    let scores = model.decisions(table.project(&model.features).view());
    let mut order: Vec<usize> = (0..table.len()).collect();
    order.sort_by_key(|&i| (table.keys[i].pid, table.keys[i].window));
    let mut smoother = Smoother::new(smoothing);
    let mut flagged = vec![false; table.len()];
    for i in order {
        flagged[i] = smoother.push(table.keys[i].pid, is_outlier(scores[i]));
    }
    Ok(table
        .keys
        .iter()
        .zip(scores)
        .zip(flagged)
        .map(|((key, score), anomalous)| Verdict {
            start_unix_ms: key.start_unix_ms,
            vm: key.vm.clone(),
            pid: key.pid,
            label: Some(key.label.clone()),
            window: key.window,
            score,
            anomalous,
            missing_features: None,
            estimated_features: None,
            probe_cost: None,
        })
        .collect())
}

/// Windows and flagged windows per label, labels in order of first
/// appearance.
pub fn tally_by_label(verdicts: &[Verdict]) -> Vec<(String, usize, usize)> {
    let mut out: Vec<(String, usize, usize)> = Vec::new();
    for v in verdicts {
        let label = v.label.as_deref().unwrap_or("");
        let i = match out.iter().position(|t| t.0 == label) {
            Some(i) => i,
            None => {
                out.push((label.to_string(), 0, 0));
                out.len() - 1
            }
        };
        out[i].1 += 1;
        out[i].2 += usize::from(v.anomalous);
    }
    out
}

/// One VM's verdict for one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub start_unix_ms: u64,
    pub vm: String,
    pub pid: u32,
    /// The row's label (offline); absent live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub window: u64,
    /// The SVM decision value; negative = outside the normal region.
    pub score: f64,
    /// After smoothing.
    pub anomalous: bool,
    /// How many of the model's features the VM's QEMU lacks (read as zero;
    /// live, when `monitor --allow-missing-features` judges it anyway);
    /// absent when it has them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_features: Option<usize>,
    /// How many of the window's counts were estimated (the cost governor
    /// duty-cycled their probes); absent when all are exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_features: Option<usize>,
    /// The share of one CPU the VM's probe hits cost in the window (live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_cost: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoother_keeps_each_vm_apart() {
        let mut s = Smoother::new(Smoothing { k: 2, n: 3 });
        assert!(!s.push(1, true));
        assert!(!s.push(2, true));
        assert!(s.push(1, true));
        assert!(!s.push(2, false));
        s.forget(&1);
        assert!(!s.push(1, true));
        let raw = [true, false, true, false, false, true, true];
        let mut t = Smoother::new(Smoothing { k: 2, n: 3 });
        let live: Vec<bool> = raw.iter().map(|&r| t.push((), r)).collect();
        assert_eq!(live, Smoothing { k: 2, n: 3 }.apply(&raw));
    }

    #[test]
    fn verdict_lines_have_a_label_only_offline() {
        let mut v = Verdict {
            start_unix_ms: 5,
            vm: "web".into(),
            pid: 7,
            label: None,
            window: 3,
            score: -0.5,
            anomalous: true,
            missing_features: None,
            estimated_features: None,
            probe_cost: None,
        };
        let live = serde_json::to_string(&v).unwrap();
        assert_eq!(
            live,
            r#"{"start_unix_ms":5,"vm":"web","pid":7,"window":3,"score":-0.5,"anomalous":true}"#
        );
        v.label = Some("idle".into());
        let offline = serde_json::to_string(&v).unwrap();
        assert!(
            offline.contains(r#""pid":7,"label":"idle","window":3"#),
            "{offline}"
        );
        assert_eq!(serde_json::from_str::<Verdict>(&offline).unwrap(), v);
        v.missing_features = Some(3);
        let degraded = serde_json::to_string(&v).unwrap();
        assert!(
            degraded.ends_with(r#""anomalous":true,"missing_features":3}"#),
            "{degraded}"
        );
    }

    #[test]
    fn coverage_names_what_a_vm_lacks_and_what_the_model_relies_on() {
        use ndarray::Array2;
        // Features a, b, c, d; d was zero in every training window.
        let mut v = Vec::new();
        for i in 0..40u32 {
            v.extend([
                10.0 + f64::from(i % 7),
                50.0 + f64::from(i % 5),
                3.0 + f64::from(i % 3),
                0.0,
            ]);
        }
        let x = Array2::from_shape_vec((40, 4), v).unwrap();
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let model = Model::fit(names, x.view(), 0.1, 0.5, Default::default()).unwrap();
        // The columns have no `c`; the VM cannot count column 0 (`b`) nor
        // column 2 (`d`).
        let columns: Vec<String> = ["b", "a", "d"].map(String::from).to_vec();
        let judge: Judge<u32> = Judge::new(model, &columns, Smoothing::default(), "x").unwrap();
        assert_eq!(judge.missing(), 1);
        let all = judge.coverage(&[]);
        assert_eq!(
            (all.missing.clone(), all.relied.clone()),
            (vec!["c".into()], vec!["c".into()])
        );
        let vm = judge.coverage(&[0, 2]);
        assert_eq!(vm.missing, ["b", "c", "d"]);
        assert_eq!(vm.relied, ["b", "c"]);
        assert!(!vm.is_usable());
        assert_eq!(
            vm.describe().unwrap(),
            "its QEMU lacks 3 of the model's 4 features, read as zero (b, c, d); the model \
             relies on 2 of them (b, c)"
        );
        let judge: Judge<u32> = Judge::new(
            judge.model().clone(),
            &["a", "b", "c"].map(String::from),
            Smoothing::default(),
            "x",
        )
        .unwrap();
        let fine = judge.coverage(&[]);
        assert!(fine.is_usable());
        assert!(fine.describe().unwrap().ends_with(
            "the model relies on none of them (they were zero in every training window)"
        ));
        assert_eq!(
            judge.coverage(&[5]).describe(),
            judge.coverage(&[]).describe()
        );
        let complete = Judge::<u32>::new(
            judge.model().clone(),
            &["a", "b", "c", "d"].map(String::from),
            Smoothing::default(),
            "x",
        )
        .unwrap();
        assert_eq!(complete.coverage(&[]).describe(), None);
    }
}
