//! The paper's evaluation (section 4): k folds of normal and anomalous
//! windows; per fold, train on the other normal folds and test on the
//! held-out normal fold plus the matching anomaly fold; TP/FP/TN/FN averaged
//! over folds; sensitivity, precision and F-measure per scenario. Also the
//! learning curve (false positives vs training windows, Fig. 3) and the
//! re-learning experiment (section 5.2).

use ndarray::{s, ArrayView2};

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::dataset::Table;
use crate::error::{Error, Result};
use crate::model::{Model, Smoothing, TrainingSummary};
use crate::train::{check_folds, choose_params, fold_ranges, without, FeatureChoice, SvmParams};

/// Confusion counts (averaged over folds, so fractional).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Confusion {
    pub tp: f64,
    pub fp: f64,
    pub tn: f64,
    pub fn_: f64,
}

impl Confusion {
    /// TP / P.
    pub fn sensitivity(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// TP / (TP + FP).
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    /// Harmonic mean of sensitivity and precision.
    pub fn f_measure(&self) -> f64 {
        let (s, p) = (self.sensitivity(), self.precision());
        if s + p == 0.0 {
            0.0
        } else {
            2.0 * s * p / (s + p)
        }
    }
    /// FP / N: false alarms among normal windows.
    pub fn fp_rate(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

fn fit(train: ArrayView2<f64>, nu: f64, gamma: f64) -> Result<Model> {
    Model::fit(Vec::new(), train, nu, gamma, TrainingSummary::default())
}

fn outside(model: &Model, x: ArrayView2<f64>) -> usize {
    flagged(model, x, Smoothing::default())
}

/// Windows of a contiguous sequence flagged after smoothing.
fn flagged(model: &Model, x: ArrayView2<f64>, smooth: Smoothing) -> usize {
    let raw: Vec<bool> = model.decisions(x).iter().map(|d| *d < 0.0).collect();
    smooth.apply(&raw).into_iter().filter(|f| *f).count()
}

/// One scenario under the paper's protocol. Verdicts are smoothed (K of
/// the last N windows) within each held-out fold, a contiguous stretch of
/// time like the windows a monitor sees.
pub fn evaluate(
    normal: ArrayView2<f64>,
    anomaly: ArrayView2<f64>,
    folds: usize,
    nu: f64,
    gamma: f64,
    smooth: Smoothing,
) -> Result<Confusion> {
    check_folds(normal.nrows(), folds)?;
    if normal.nrows() < folds * 2 || anomaly.nrows() < folds {
        return Err(Error::Invalid(format!(
            "{} normal and {} anomalous windows are too few for {folds} folds",
            normal.nrows(),
            anomaly.nrows()
        )));
    }
    let mut sum = Confusion::default();
    for (n_test, a_test) in fold_ranges(normal.nrows(), folds)
        .into_iter()
        .zip(fold_ranges(anomaly.nrows(), folds))
    {
        let model = fit(without(normal, &n_test).view(), nu, gamma)?;
        let held = normal.slice(s![n_test, ..]);
        let attacks = anomaly.slice(s![a_test, ..]);
        let fp = flagged(&model, held, smooth) as f64;
        let tp = flagged(&model, attacks, smooth) as f64;
        sum.fp += fp;
        sum.tn += held.nrows() as f64 - fp;
        sum.tp += tp;
        sum.fn_ += attacks.nrows() as f64 - tp;
    }
    let k = folds as f64;
    Ok(Confusion {
        tp: sum.tp / k,
        fp: sum.fp / k,
        tn: sum.tn / k,
        fn_: sum.fn_ / k,
    })
}

/// Mean false-positive rate on held-out folds when training on the first
/// `size` windows of the other folds, for each size (Fig. 3).
pub fn learning_curve(
    normal: ArrayView2<f64>,
    folds: usize,
    nu: f64,
    gamma: f64,
    sizes: &[usize],
) -> Result<Vec<(usize, f64)>> {
    check_folds(normal.nrows(), folds)?;
    let mut out = Vec::new();
    for &size in sizes {
        let mut rate = 0.0;
        let ranges = fold_ranges(normal.nrows(), folds);
        for test in &ranges {
            let train = without(normal, test);
            if size > train.nrows() {
                return Ok(out);
            }
            let model = fit(train.slice(s![..size, ..]), nu, gamma)?;
            let held = normal.slice(s![test.clone(), ..]);
            rate += outside(&model, held) as f64 / held.nrows().max(1) as f64;
        }
        out.push((size, rate / folds as f64));
    }
    Ok(out)
}

/// Re-learning (section 5.2): the false-positive rate on a new normal
/// (`peak`) of a model trained on `normal` only, then of models trained on
/// `normal` plus the other folds of `peak` (tested on the held-out fold).
pub fn relearn(
    normal: ArrayView2<f64>,
    peak: ArrayView2<f64>,
    folds: usize,
    nu: f64,
    gamma: f64,
) -> Result<(f64, f64)> {
    check_folds(peak.nrows(), folds)?;
    let before = fit(normal, nu, gamma)?;
    let before_rate = outside(&before, peak) as f64 / peak.nrows().max(1) as f64;
    let mut after = 0.0;
    for test in fold_ranges(peak.nrows(), folds) {
        let extra = without(peak, &test);
        let train = ndarray::concatenate(ndarray::Axis(0), &[normal.view(), extra.view()])
            .map_err(|e| Error::Invalid(format!("joining training sets: {e}")))?;
        let model = fit(train.view(), nu, gamma)?;
        let held = peak.slice(s![test, ..]);
        after += outside(&model, held) as f64 / held.nrows().max(1) as f64;
    }
    Ok((before_rate, after / folds as f64))
}

/// How `vmwatch eval` runs.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub features: FeatureChoice,
    pub params: SvmParams,
    pub folds: usize,
    pub smoothing: Smoothing,
}

/// One scenario's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub windows: usize,
    pub tp: f64,
    pub fp: f64,
    pub tn: f64,
    pub fn_: f64,
    pub sensitivity: f64,
    pub precision: f64,
    pub f_measure: f64,
    pub fp_rate: f64,
}

/// The re-learning experiment's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelearnReport {
    pub file: String,
    pub fp_rate_before: f64,
    pub fp_rate_after: f64,
}

/// What `vmwatch eval` found (its `--json`, read by `cargo xtask eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub normal: String,
    pub normal_windows: usize,
    pub features: usize,
    pub nu: f64,
    pub gamma: f64,
    /// How nu and gamma were chosen (`fixed`, or the grid and its CV rate).
    pub parameters: String,
    pub folds: usize,
    pub smoothing: String,
    pub scenarios: Vec<ScenarioReport>,
    pub median_f_measure: f64,
    pub median_sensitivity: f64,
    pub median_fp_rate: f64,
    /// (training windows, false-positive rate).
    pub learning_curve: Vec<(usize, f64)>,
    pub relearn: Option<RelearnReport>,
}

/// Training-set sizes of the learning curve (those that fit in k − 1 folds).
const CURVE_SIZES: [usize; 7] = [10, 20, 50, 100, 200, 400, 800];

/// The paper's evaluation of `normal` against each named anomaly table
/// (and, with `relearn`, the re-learning experiment on a second normal).
/// Features come from all the tables given; `progress` hears each step.
pub fn run(
    normal: (&str, &Table),
    anomalies: &[(String, Table)],
    relearn_with: Option<(&str, &Table)>,
    config: &EvalConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    let (normal_name, normal) = normal;
    let tables: Vec<&Table> = std::iter::once(normal)
        .chain(anomalies.iter().map(|(_, t)| t))
        .chain(relearn_with.map(|(_, t)| t))
        .collect();
    let features = config.features.resolve(&tables)?;
    let x_normal = normal.project(&features);
    let folds = config.folds;
    if let SvmParams::Search(grid) = config.params {
        progress(&format!(
            "searching nu and gamma ({} grid, {folds} folds)…",
            grid.name()
        ));
    }
    let chosen = choose_params(x_normal.view(), folds, config.params, &|| {})?;
    let (nu, gamma) = (chosen.nu, chosen.gamma);
    let mut scenarios = Vec::new();
    for (name, table) in anomalies {
        progress(&format!("evaluating {name}…"));
        let c = evaluate(
            x_normal.view(),
            table.project(&features).view(),
            folds,
            nu,
            gamma,
            config.smoothing,
        )?;
        scenarios.push(ScenarioReport {
            name: name.clone(),
            windows: table.len(),
            tp: c.tp,
            fp: c.fp,
            tn: c.tn,
            fn_: c.fn_,
            sensitivity: c.sensitivity(),
            precision: c.precision(),
            f_measure: c.f_measure(),
            fp_rate: c.fp_rate(),
        });
    }
    let sizes: Vec<usize> = CURVE_SIZES
        .into_iter()
        .filter(|&n| n <= x_normal.nrows() * (folds - 1) / folds)
        .collect();
    let curve = learning_curve(x_normal.view(), folds, nu, gamma, &sizes)?;
    let relearned = match relearn_with {
        Some((file, peak)) => {
            let (before, after) = relearn(
                x_normal.view(),
                peak.project(&features).view(),
                folds,
                nu,
                gamma,
            )?;
            Some(RelearnReport {
                file: file.to_string(),
                fp_rate_before: before,
                fp_rate_after: after,
            })
        }
        None => None,
    };
    let of = |f: fn(&ScenarioReport) -> f64| median(&scenarios.iter().map(f).collect::<Vec<_>>());
    Ok(Report {
        normal: normal_name.to_string(),
        normal_windows: normal.len(),
        features: features.len(),
        nu,
        gamma,
        parameters: chosen.describe(),
        folds,
        smoothing: config.smoothing.to_string(),
        median_f_measure: of(|s| s.f_measure),
        median_sensitivity: of(|s| s.sensitivity),
        median_fp_rate: of(|s| s.fp_rate),
        scenarios,
        learning_curve: curve,
        relearn: relearned,
    })
}

impl Report {
    /// The report as `vmwatch eval` prints it (markdown).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        // Writing to a String cannot fail.
        let _ = writeln!(
            w,
            "Normal: `{}` ({} windows); {} features; nu = {}, gamma = {} ({}); {} folds; \
             smoothing {}.\n",
            self.normal,
            self.normal_windows,
            self.features,
            self.nu,
            self.gamma,
            self.parameters,
            self.folds,
            self.smoothing
        );
        let _ = writeln!(
            w,
            "| scenario | windows | TP | FP | TN | FN | sensitivity | precision | F-measure |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in &self.scenarios {
            let _ = writeln!(
                w,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}% | {:.1}% | {:.1}% |",
                c.name,
                c.windows,
                c.tp,
                c.fp,
                c.tn,
                c.fn_,
                100.0 * c.sensitivity,
                100.0 * c.precision,
                100.0 * c.f_measure
            );
        }
        let _ = writeln!(
            w,
            "\nMedian over {} scenarios: F-measure {:.1}%, sensitivity {:.1}%; false positives \
             on held-out normal windows {:.2}%.\n",
            self.scenarios.len(),
            100.0 * self.median_f_measure,
            100.0 * self.median_sensitivity,
            100.0 * self.median_fp_rate
        );
        let _ = writeln!(
            w,
            "Learning curve (false positives on held-out normal folds):\n"
        );
        let _ = writeln!(w, "| training windows | false positives |");
        let _ = writeln!(w, "|---:|---:|");
        for (n, rate) in &self.learning_curve {
            let _ = writeln!(w, "| {n} | {:.2}% |", rate * 100.0);
        }
        if let Some(r) = &self.relearn {
            let _ = writeln!(
                w,
                "\nRe-learning with `{}`: {:.1}% false positives when trained on the normal \
                 file alone, {:.1}% after adding the other folds of the new normal (paper: 82% \
                 → 1%).",
                r.file,
                r.fp_rate_before * 100.0,
                r.fp_rate_after * 100.0
            );
        }
        out
    }
}

/// Median of a list (mean of the middle two for even lengths).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn cloud(rows: u32, shift: f64) -> Array2<f64> {
        let mut v = Vec::new();
        for i in 0..rows {
            v.extend([
                100.0 + f64::from(i * 37 % 23) + shift,
                1000.0 + 3.0 * f64::from(i * 53 % 31),
            ]);
        }
        Array2::from_shape_vec((rows as usize, 2), v).unwrap()
    }

    #[test]
    fn metrics_by_hand() {
        let c = Confusion {
            tp: 8.0,
            fp: 2.0,
            tn: 18.0,
            fn_: 2.0,
        };
        assert_eq!(c.sensitivity(), 0.8);
        assert_eq!(c.precision(), 0.8);
        assert!((c.f_measure() - 0.8).abs() < 1e-12);
        assert_eq!(c.fp_rate(), 0.1);
        assert_eq!(Confusion::default().f_measure(), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn separable_scenario_scores_high_and_same_scenario_low() {
        let normal = cloud(100, 0.0);
        let far = cloud(50, 5000.0);
        let raw = Smoothing::default();
        let c = evaluate(normal.view(), far.view(), 5, 0.05, 0.5, raw).unwrap();
        assert_eq!(c.tp, 10.0);
        assert_eq!(c.sensitivity(), 1.0);
        assert!(c.f_measure() > 0.8, "{c:?}");
        let same = evaluate(normal.view(), cloud(50, 0.0).view(), 5, 0.05, 0.5, raw).unwrap();
        assert!(same.sensitivity() < 0.3, "{same:?}");
        // 3 of 3 needs a run of three flagged windows: never more flags.
        let strict = Smoothing { k: 3, n: 3 };
        let s = evaluate(normal.view(), cloud(50, 0.0).view(), 5, 0.05, 0.5, strict).unwrap();
        assert!(s.fp <= same.fp && s.tp <= same.tp, "{s:?} vs {same:?}");
        let f = evaluate(normal.view(), far.view(), 5, 0.05, 0.5, strict).unwrap();
        assert_eq!(
            f.tp, 8.0,
            "the first two windows of each fold wait for history"
        );
    }

    #[test]
    fn relearning_absorbs_a_new_normal() {
        let normal = cloud(100, 0.0);
        let peak = cloud(50, 400.0);
        let (before, after) = relearn(normal.view(), peak.view(), 5, 0.05, 0.5).unwrap();
        assert!(before > 0.9, "{before}");
        assert!(after < before, "{after} vs {before}");
        let curve = learning_curve(normal.view(), 5, 0.05, 0.5, &[10, 40, 80, 1000]).unwrap();
        assert_eq!(curve.len(), 3, "sizes beyond the data are skipped");
    }
}
