//! The paper's evaluation (section 4): k folds of normal and anomalous
//! windows; per fold, train on the other normal folds and test on the
//! held-out normal fold plus the matching anomaly fold; TP/FP/TN/FN averaged
//! over folds; sensitivity, precision and F-measure per scenario. Also the
//! learning curve (false positives vs training windows, Fig. 3) and the
//! re-learning experiment (section 5.2).

pub mod boots;
pub mod explain;

use std::fmt::Write as _;
use std::ops::Range;

use ndarray::{s, ArrayView2, Axis};

use serde::{Deserialize, Serialize};

use crate::dataset::Table;
use crate::error::{Error, Result};
use crate::model::{Model, Smoothing, TrainingSummary};
use crate::train::{
    check_folds, choose_params, fold_ranges, without, Chosen, FeatureChoice, Folds, SvmParams,
};

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

/// The verdict on each window of a contiguous sequence, after smoothing,
/// by `fold`'s model (`x`: all columns).
fn flagged_each(fold: &Fold, x: ArrayView2<f64>, smooth: Smoothing) -> Vec<bool> {
    let x = x.select(Axis(1), &fold.columns);
    let raw: Vec<bool> = fold
        .model
        .decisions(x.view())
        .iter()
        .map(|d| *d < 0.0)
        .collect();
    smooth.apply(&raw)
}

/// Which columns a model may learn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// Every column given (a list chosen elsewhere, e.g. by `select`).
    All,
    /// Those nonzero in some training window.
    Nonzero,
}

impl Columns {
    /// The columns of `train` a model learns from; none is an error.
    pub fn of(self, train: ArrayView2<f64>) -> Result<Vec<usize>> {
        let cols: Vec<usize> = (0..train.ncols())
            .filter(|&j| self == Columns::All || train.column(j).iter().any(|&v| v != 0.0))
            .collect();
        if cols.is_empty() {
            return Err(Error::Invalid(
                "every feature is zero in the training windows: nothing to learn from".into(),
            ));
        }
        Ok(cols)
    }
}

/// One outer fold of the nested protocol: its held-out normal windows,
/// and what was chosen from the other windows alone (columns, nu and
/// gamma by an inner cross-validation) and fitted on them.
#[derive(Debug, Clone)]
pub struct Fold {
    pub test: Range<usize>,
    pub columns: Vec<usize>,
    pub chosen: Chosen,
    pub model: Model,
}

impl Fold {
    /// Trains one outer fold on `train`'s rows (`test`: the rows held out
    /// of the normal windows, for the record), the grid search
    /// cross-validating over `folds` of them.
    fn train(
        train: ArrayView2<f64>,
        test: Range<usize>,
        columns: Columns,
        folds: &Folds,
        params: SvmParams,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Fold> {
        let cols = columns.of(train)?;
        let x = train.select(Axis(1), &cols);
        let chosen = choose_params(x.view(), folds, params, progress)?;
        let model = fit(x.view(), chosen.nu, chosen.gamma)?;
        Ok(Fold {
            test,
            columns: cols,
            chosen,
            model,
        })
    }

    /// Windows of `x` (all columns) this fold's model flags.
    fn flagged(&self, x: ArrayView2<f64>, smooth: Smoothing) -> usize {
        flagged(&self.model, x.select(Axis(1), &self.columns).view(), smooth)
    }

    /// What the fold chose, for reports.
    pub fn choice(&self) -> FoldChoice {
        FoldChoice {
            features: self.columns.len(),
            nu: self.chosen.nu,
            gamma: self.chosen.gamma,
            cv_fp_rate: self.chosen.fp_rate,
        }
    }
}

/// The outer folds of `normal`: for each, columns and parameters are
/// chosen from its training windows only (the grid search cross-validates
/// inside them, `folds` inner folds), so its held-out windows never
/// influence the model that is tested on them. `progress` hears each fold.
pub fn nested_folds(
    normal: ArrayView2<f64>,
    folds: usize,
    columns: Columns,
    params: SvmParams,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Fold>> {
    check_folds(normal.nrows(), folds)?;
    if normal.nrows() < folds * 2 {
        return Err(Error::Invalid(format!(
            "{} normal windows are too few for {folds} folds",
            normal.nrows()
        )));
    }
    fold_ranges(normal.nrows(), folds)
        .into_iter()
        .enumerate()
        .map(|(i, test)| {
            progress(i);
            let train = without(normal, &test);
            let inner = Folds::contiguous(train.nrows(), folds)?;
            Fold::train(train.view(), test, columns, &inner, params, &|| {})
        })
        .collect()
}

/// One scenario under the paper's protocol, nested: per outer fold, the
/// fold's model is tested on its held-out normal windows and on the
/// matching fold of `anomaly`. Verdicts are smoothed (K of the last N
/// windows) within each held-out fold, a contiguous stretch of time like
/// the windows a monitor sees.
pub fn evaluate(
    normal: ArrayView2<f64>,
    anomaly: ArrayView2<f64>,
    folds: &[Fold],
    smooth: Smoothing,
) -> Result<Confusion> {
    let k = folds.len();
    if anomaly.nrows() < k {
        return Err(Error::Invalid(format!(
            "{} anomalous windows are too few for {k} folds",
            anomaly.nrows()
        )));
    }
    let mut sum = Confusion::default();
    for (fold, a_test) in folds.iter().zip(fold_ranges(anomaly.nrows(), k)) {
        let held = normal.slice(s![fold.test.clone(), ..]);
        let attacks = anomaly.slice(s![a_test, ..]);
        let fp = fold.flagged(held, smooth) as f64;
        let tp = fold.flagged(attacks, smooth) as f64;
        sum.fp += fp;
        sum.tn += held.nrows() as f64 - fp;
        sum.tp += tp;
        sum.fn_ += attacks.nrows() as f64 - tp;
    }
    let k = k as f64;
    Ok(Confusion {
        tp: sum.tp / k,
        fp: sum.fp / k,
        tn: sum.tn / k,
        fn_: sum.fn_ / k,
    })
}

/// Mean false-positive rate on held-out folds when training on the first
/// `size` windows of the other folds, for each size (Fig. 3), with each
/// fold's columns and parameters.
pub fn learning_curve(
    normal: ArrayView2<f64>,
    folds: &[Fold],
    sizes: &[usize],
) -> Result<Vec<(usize, f64)>> {
    let mut out = Vec::new();
    for &size in sizes {
        let mut rate = 0.0;
        for fold in folds {
            let train = without(normal, &fold.test).select(Axis(1), &fold.columns);
            if size > train.nrows() {
                return Ok(out);
            }
            let model = fit(
                train.slice(s![..size, ..]),
                fold.chosen.nu,
                fold.chosen.gamma,
            )?;
            let held = normal.slice(s![fold.test.clone(), ..]);
            let held = held.select(Axis(1), &fold.columns);
            rate += outside(&model, held.view()) as f64 / held.nrows().max(1) as f64;
        }
        out.push((size, rate / folds.len().max(1) as f64));
    }
    Ok(out)
}

/// Re-learning (section 5.2): the false-positive rate on a new normal
/// (`peak`) of a model trained on `normal` only, then of models trained on
/// `normal` plus the other folds of `peak` (tested on the held-out fold).
/// Columns come from each training set; nu and gamma are given (chosen on
/// `normal`).
pub fn relearn(
    normal: ArrayView2<f64>,
    peak: ArrayView2<f64>,
    folds: usize,
    columns: Columns,
    nu: f64,
    gamma: f64,
) -> Result<(f64, f64)> {
    check_folds(peak.nrows(), folds)?;
    let rate = |train: ArrayView2<f64>, test: ArrayView2<f64>| -> Result<f64> {
        let cols = columns.of(train)?;
        let model = fit(train.select(Axis(1), &cols).view(), nu, gamma)?;
        let flagged = outside(&model, test.select(Axis(1), &cols).view());
        Ok(flagged as f64 / test.nrows().max(1) as f64)
    };
    let before = rate(normal, peak)?;
    let mut after = 0.0;
    for test in fold_ranges(peak.nrows(), folds) {
        let extra = without(peak, &test);
        let train = ndarray::concatenate(Axis(0), &[normal.view(), extra.view()])
            .map_err(|e| Error::Invalid(format!("joining training sets: {e}")))?;
        after += rate(train.view(), peak.slice(s![test, ..]))?;
    }
    Ok((before, after / folds as f64))
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

impl ScenarioReport {
    /// `name`'s row of `windows` anomalous windows, from its confusion counts.
    pub fn new(name: String, windows: usize, c: &Confusion) -> Self {
        Self {
            name,
            windows,
            tp: c.tp,
            fp: c.fp,
            tn: c.tn,
            fn_: c.fn_,
            sensitivity: c.sensitivity(),
            precision: c.precision(),
            f_measure: c.f_measure(),
            fp_rate: c.fp_rate(),
        }
    }
}

/// The re-learning experiment's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelearnReport {
    pub file: String,
    pub fp_rate_before: f64,
    pub fp_rate_after: f64,
}

/// What one outer fold chose from its own training windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldChoice {
    pub features: usize,
    pub nu: f64,
    pub gamma: f64,
    /// The inner cross-validation's false-positive rate of the chosen
    /// point (grid search only).
    pub cv_fp_rate: Option<f64>,
}

/// What `vmwatch eval` found (its `--json`, read by `cargo xtask eval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub normal: String,
    pub normal_windows: usize,
    /// Features, nu and gamma chosen on all normal windows (what `vmwatch
    /// train` would choose on the file; the re-learning experiment's).
    pub features: usize,
    pub nu: f64,
    pub gamma: f64,
    /// How nu and gamma were chosen (`fixed`, or the grid and its CV rate).
    pub parameters: String,
    pub folds: usize,
    /// What each outer fold chose from its training windows (the models
    /// the scenarios and the learning curve are measured with).
    #[serde(default)]
    pub fold_choices: Vec<FoldChoice>,
    pub smoothing: String,
    pub scenarios: Vec<ScenarioReport>,
    pub median_f_measure: f64,
    pub median_sensitivity: f64,
    pub median_fp_rate: f64,
    /// (training windows, false-positive rate).
    pub learning_curve: Vec<(usize, f64)>,
    pub relearn: Option<RelearnReport>,
    /// Evaluated by boot ([`boots`]): each held-out boot's result, in the
    /// order of `fold_choices`.
    #[serde(default)]
    pub boots: Vec<boots::BootResult>,
    /// By boot, with a learning curve asked for: its points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_curve: Vec<boots::CurvePoint>,
}

/// Training-set sizes of the learning curve (those that fit in k − 1 folds).
const CURVE_SIZES: [usize; 7] = [10, 20, 50, 100, 200, 400, 800];

/// The paper's evaluation of `normal` against each named anomaly table
/// (and, with `relearn`, the re-learning experiment on a second normal),
/// nested: features and parameters are chosen inside each outer fold from
/// its training windows, never from the windows it is tested on nor from
/// the anomaly tables. `progress` hears each step.
pub fn run(
    normal: (&str, &Table),
    anomalies: &[(String, Table)],
    relearn_with: Option<(&str, &Table)>,
    config: &EvalConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    let (normal_name, normal) = normal;
    // Candidates from the normal windows alone; each fold narrows them to
    // its training windows' nonzero columns.
    let features = config.features.resolve(&[normal])?;
    let columns = match &config.features {
        FeatureChoice::List(_) => Columns::All,
        FeatureChoice::Nonzero(_) => Columns::Nonzero,
    };
    let x_normal = normal.project(&features);
    let folds = config.folds;
    let searching = match config.params {
        SvmParams::Search(grid) => format!(
            ", searching nu and gamma ({} grid, {folds} inner folds)",
            grid.name()
        ),
        SvmParams::Fixed { .. } => String::new(),
    };
    let outer = nested_folds(x_normal.view(), folds, columns, config.params, &mut |i| {
        progress(&format!("outer fold {}/{folds}{searching}…", i + 1))
    })?;
    progress(&format!(
        "all {} normal windows{searching}…",
        x_normal.nrows()
    ));
    let inner = Folds::contiguous(x_normal.nrows(), folds)?;
    let all = Fold::train(
        x_normal.view(),
        0..0,
        columns,
        &inner,
        config.params,
        &|| {},
    )?;
    let (nu, gamma) = (all.chosen.nu, all.chosen.gamma);
    let mut scenarios = Vec::new();
    for (name, table) in anomalies {
        progress(&format!("evaluating {name}…"));
        let c = evaluate(
            x_normal.view(),
            table.project(&features).view(),
            &outer,
            config.smoothing,
        )?;
        scenarios.push(ScenarioReport::new(name.clone(), table.len(), &c));
    }
    let sizes: Vec<usize> = CURVE_SIZES
        .into_iter()
        .filter(|&n| n <= x_normal.nrows() * (folds - 1) / folds)
        .collect();
    let curve = learning_curve(x_normal.view(), &outer, &sizes)?;
    let relearned = match relearn_with {
        Some((file, peak)) => {
            // The new normal may fire what the old never did: candidates
            // from both, columns from each training set.
            let both = match &config.features {
                FeatureChoice::List(_) => features.clone(),
                FeatureChoice::Nonzero(_) => config.features.resolve(&[normal, peak])?,
            };
            let (before, after) = relearn(
                normal.project(&both).view(),
                peak.project(&both).view(),
                folds,
                columns,
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
        features: all.columns.len(),
        nu,
        gamma,
        parameters: all.chosen.describe(),
        folds,
        fold_choices: outer.iter().map(Fold::choice).collect(),
        smoothing: config.smoothing.to_string(),
        median_f_measure: of(|s| s.f_measure),
        median_sensitivity: of(|s| s.sensitivity),
        median_fp_rate: of(|s| s.fp_rate),
        scenarios,
        learning_curve: curve,
        relearn: relearned,
        boots: Vec::new(),
        boot_curve: Vec::new(),
    })
}

impl Report {
    /// The smallest and largest (nu, gamma) the outer folds chose.
    pub fn chosen_ranges(&self) -> ((f64, f64), (f64, f64)) {
        let span = |f: fn(&FoldChoice) -> f64| {
            self.fold_choices
                .iter()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        };
        (span(|c| c.nu), span(|c| c.gamma))
    }

    /// The report as `vmwatch eval` prints it (markdown).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        // Writing to a String cannot fail.
        if self.boots.is_empty() {
            let _ = writeln!(
                w,
                "Normal: `{}` ({} windows); {} folds, nested: each outer fold chose its features \
                 and parameters from its own training windows; smoothing {}.\n",
                self.normal, self.normal_windows, self.folds, self.smoothing
            );
        } else {
            let _ = writeln!(
                w,
                "By boot: {}, {} normal windows; each boot held out in turn and scored by a model \
                 chosen ({} inner folds) and fitted on the normal windows of the other boots; \
                 smoothing {} over each boot's windows in time order.\n",
                self.normal, self.normal_windows, self.folds, self.smoothing
            );
            w.push_str(&boots::markdown(&self.boots, &self.fold_choices));
        }
        if self.boots.is_empty() {
            let _ = writeln!(
                w,
                "| outer fold | features | nu | gamma | inner CV false positives |"
            );
            let _ = writeln!(w, "|---:|---:|---:|---:|---:|");
            for (i, c) in self.fold_choices.iter().enumerate() {
                let cv = c
                    .cv_fp_rate
                    .map_or("—".to_string(), |r| format!("{:.2}%", r * 100.0));
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {cv} |",
                    i + 1,
                    c.features,
                    c.nu,
                    c.gamma
                );
            }
        }
        let _ = writeln!(
            w,
            "\nOn all normal windows (what `vmwatch train` would choose; the re-learning \
             experiment's): {} features, nu = {}, gamma = {} ({}).\n",
            self.features, self.nu, self.gamma, self.parameters
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
        if !self.learning_curve.is_empty() {
            let _ = writeln!(
                w,
                "Learning curve (false positives on held-out normal folds):\n"
            );
            let _ = writeln!(w, "| training windows | false positives |");
            let _ = writeln!(w, "|---:|---:|");
            for (n, rate) in &self.learning_curve {
                let _ = writeln!(w, "| {n} | {:.2}% |", rate * 100.0);
            }
        }
        if !self.boot_curve.is_empty() {
            let _ = writeln!(
                w,
                "Learning curve by boot (each held-out boot scored by a model of the K boots \
                 after it):\n"
            );
            let _ = writeln!(
                w,
                "| training boots | training windows | median F-measure | median sensitivity | \
                 false positives |"
            );
            let _ = writeln!(w, "|---:|---:|---:|---:|---:|");
            for p in &self.boot_curve {
                let _ = writeln!(
                    w,
                    "| {} | {} | {:.1}% | {:.1}% | {:.2}% |",
                    p.boots,
                    p.training_windows,
                    100.0 * p.median_f_measure,
                    100.0 * p.median_sensitivity,
                    100.0 * p.fp_rate
                );
            }
        }
        if let (Some(r), false) = (&self.relearn, self.boots.is_empty()) {
            let _ = writeln!(
                w,
                "\nRe-learning with the boots {}: {:.1}% false positives when scored by the model \
                 of every normal window above, {:.1}% by one that also learned the other boots \
                 of the new normal (paper: 82% → 1%).",
                r.file,
                r.fp_rate_before * 100.0,
                r.fp_rate_after * 100.0
            );
        } else if let Some(r) = &self.relearn {
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

    fn fixed(normal: ArrayView2<f64>, folds: usize) -> Vec<Fold> {
        let params = SvmParams::Fixed {
            nu: 0.05,
            gamma: 0.5,
        };
        nested_folds(normal, folds, Columns::All, params, &mut |_| {}).unwrap()
    }

    #[test]
    fn separable_scenario_scores_high_and_same_scenario_low() {
        let normal = cloud(100, 0.0);
        let folds = fixed(normal.view(), 5);
        let far = cloud(50, 5000.0);
        let raw = Smoothing::default();
        let c = evaluate(normal.view(), far.view(), &folds, raw).unwrap();
        assert_eq!(c.tp, 10.0);
        assert_eq!(c.sensitivity(), 1.0);
        assert!(c.f_measure() > 0.8, "{c:?}");
        let same = evaluate(normal.view(), cloud(50, 0.0).view(), &folds, raw).unwrap();
        assert!(same.sensitivity() < 0.3, "{same:?}");
        // 3 of 3 needs a run of three flagged windows: never more flags.
        let strict = Smoothing { k: 3, n: 3 };
        let s = evaluate(normal.view(), cloud(50, 0.0).view(), &folds, strict).unwrap();
        assert!(s.fp <= same.fp && s.tp <= same.tp, "{s:?} vs {same:?}");
        let f = evaluate(normal.view(), far.view(), &folds, strict).unwrap();
        assert_eq!(
            f.tp, 8.0,
            "the first two windows of each fold wait for history"
        );
        assert!(evaluate(normal.view(), cloud(3, 0.0).view(), &folds, raw).is_err());
    }

    #[test]
    fn each_outer_fold_chooses_from_its_training_windows_only() {
        // A third column fires only inside the first fold's held-out
        // windows: that fold must not learn from it, the others do.
        let base = cloud(40, 0.0);
        let mut normal = Array2::zeros((40, 3));
        normal.slice_mut(s![.., ..2]).assign(&base);
        for i in 0..8 {
            normal[[i, 2]] = 50.0 + f64::from(i as u32);
        }
        let grid = SvmParams::Search(crate::train::Grid::Wide);
        let folds = nested_folds(normal.view(), 5, Columns::Nonzero, grid, &mut |_| {}).unwrap();
        assert_eq!(folds[0].test, 0..8);
        assert_eq!(folds[0].columns, [0, 1]);
        for f in &folds[1..] {
            assert_eq!(f.columns, [0, 1, 2]);
        }
        // Each fold's parameters are the search on its training windows
        // alone, which the held-out fold changes.
        for f in &folds {
            let train = without(normal.view(), &f.test).select(Axis(1), &f.columns);
            let inner = Folds::contiguous(train.nrows(), 5).unwrap();
            let alone = choose_params(train.view(), &inner, grid, &|| {}).unwrap();
            assert_eq!(f.chosen, alone);
        }
        let all = Columns::Nonzero.of(normal.view()).unwrap();
        assert_eq!(all, [0, 1, 2]);
        assert!(Columns::Nonzero.of(Array2::zeros((4, 2)).view()).is_err());
    }

    #[test]
    fn relearning_absorbs_a_new_normal() {
        let normal = cloud(100, 0.0);
        let peak = cloud(50, 400.0);
        let (before, after) =
            relearn(normal.view(), peak.view(), 5, Columns::All, 0.05, 0.5).unwrap();
        assert!(before > 0.9, "{before}");
        assert!(after < before, "{after} vs {before}");
        let folds = fixed(normal.view(), 5);
        let curve = learning_curve(normal.view(), &folds, &[10, 40, 80, 1000]).unwrap();
        assert_eq!(curve.len(), 3, "sizes beyond the data are skipped");
    }
}
