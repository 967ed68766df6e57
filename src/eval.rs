//! The paper's evaluation (section 4): k folds of normal and anomalous
//! windows; per fold, train on the other normal folds and test on the
//! held-out normal fold plus the matching anomaly fold; TP/FP/TN/FN averaged
//! over folds; sensitivity, precision and F-measure per scenario. Also the
//! learning curve (false positives vs training windows, Fig. 3) and the
//! re-learning experiment (section 5.2).

use ndarray::{s, ArrayView2};

use crate::error::{Error, Result};
use crate::model::{Model, Smoothing, TrainingSummary};
use crate::train::{check_folds, fold_ranges, without};

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
