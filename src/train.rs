//! Parameter search for the one-class SVM, the paper's way: k-fold
//! cross-validation on normal windows only, with the false-positive rate as
//! the target, over a grid of (nu, gamma).

use ndarray::{Array2, ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::model::{Model, TrainingSummary};

/// A grid of (nu, gamma) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// nu and gamma each 0.01, 0.02, … 0.10 (the paper's 100 points).
    Paper,
    /// nu in {0.005, 0.01, 0.02, 0.05, 0.1} × gamma from 1e-4 to 10 in
    /// half-decades: for wide feature sets, where 0.01 ≤ gamma is too narrow
    /// a kernel.
    Wide,
}

impl std::str::FromStr for Grid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paper" => Ok(Grid::Paper),
            "wide" => Ok(Grid::Wide),
            _ => Err(format!("unknown grid `{s}` (paper, wide)")),
        }
    }
}

impl Grid {
    pub fn points(self) -> Vec<(f64, f64)> {
        match self {
            Grid::Paper => {
                let steps: Vec<f64> = (1..=10).map(|i| f64::from(i) / 100.0).collect();
                steps
                    .iter()
                    .flat_map(|&nu| steps.iter().map(move |&g| (nu, g)))
                    .collect()
            }
            Grid::Wide => {
                let nus = [0.005, 0.01, 0.02, 0.05, 0.1];
                let gammas: Vec<f64> = (-8..=2).map(|e| 10f64.powf(f64::from(e) / 2.0)).collect();
                nus.iter()
                    .flat_map(|&nu| gammas.iter().map(move |&g| (nu, g)))
                    .collect()
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Grid::Paper => "paper",
            Grid::Wide => "wide",
        }
    }
}

/// Cross-validated false-positive rate of one grid point.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub nu: f64,
    pub gamma: f64,
    pub fp_rate: f64,
}

/// Row ranges of `folds` contiguous folds. Windows next to each other in
/// time are alike, so contiguous folds test on windows the model has not
/// seen the neighbours of: a more honest false-positive rate than shuffling.
pub fn fold_ranges(rows: usize, folds: usize) -> Vec<std::ops::Range<usize>> {
    (0..folds)
        .map(|f| (f * rows / folds)..((f + 1) * rows / folds))
        .collect()
}

/// Rows of `x` outside `test`.
pub fn without(x: ArrayView2<f64>, test: &std::ops::Range<usize>) -> Array2<f64> {
    let keep: Vec<usize> = (0..x.nrows()).filter(|i| !test.contains(i)).collect();
    x.select(Axis(0), &keep)
}

/// Fails unless `rows` windows make `folds` folds of at least one window
/// each, with at least 2 folds.
pub fn check_folds(rows: usize, folds: usize) -> Result<()> {
    if folds < 2 {
        return Err(Error::Invalid(format!(
            "cross-validation needs at least 2 folds, not {folds}"
        )));
    }
    if rows < folds {
        return Err(Error::Invalid(format!(
            "{rows} windows are too few for {folds} folds"
        )));
    }
    Ok(())
}

/// Mean false-positive rate over `folds` folds for one (nu, gamma).
pub fn cv_fp_rate(raw: ArrayView2<f64>, folds: usize, nu: f64, gamma: f64) -> Result<f64> {
    check_folds(raw.nrows(), folds)?;
    let mut rates = Vec::with_capacity(folds);
    for test in fold_ranges(raw.nrows(), folds) {
        let train = without(raw, &test);
        let model = Model::fit(
            Vec::new(),
            train.view(),
            nu,
            gamma,
            TrainingSummary::default(),
        )?;
        let held = raw.slice(ndarray::s![test.clone(), ..]);
        let fp = model.decisions(held).iter().filter(|d| **d < 0.0).count();
        rates.push(fp as f64 / held.nrows().max(1) as f64);
    }
    Ok(rates.iter().sum::<f64>() / rates.len() as f64)
}

/// Scores every grid point (in parallel) and returns the best and all.
/// Best = lowest false-positive rate; ties go to the larger gamma, then the
/// larger nu: the tightest boundary among equally quiet ones detects most.
pub fn grid_search(
    raw: ArrayView2<f64>,
    folds: usize,
    grid: &[(f64, f64)],
    progress: &(dyn Fn() + Sync),
) -> Result<(Scored, Vec<Scored>)> {
    check_folds(raw.nrows(), folds)?;
    if raw.nrows() < folds * 2 {
        return Err(Error::Invalid(format!(
            "{} training windows are too few for {folds}-fold cross-validation",
            raw.nrows()
        )));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = grid.len().div_ceil(threads);
    let results: Vec<Result<Vec<Scored>>> = std::thread::scope(|s| {
        let handles: Vec<_> = grid
            .chunks(chunk.max(1))
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&(nu, gamma)| {
                            let fp_rate = cv_fp_rate(raw, folds, nu, gamma)?;
                            progress();
                            Ok(Scored { nu, gamma, fp_rate })
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("grid worker panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(grid.len());
    for r in results {
        all.extend(r?);
    }
    let best = *all
        .iter()
        .min_by(|a, b| {
            a.fp_rate
                .total_cmp(&b.fp_rate)
                .then(b.gamma.total_cmp(&a.gamma))
                .then(b.nu.total_cmp(&a.nu))
        })
        .ok_or_else(|| Error::Invalid("empty parameter grid".into()))?;
    Ok((best, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_and_folds() {
        let p = Grid::Paper.points();
        assert_eq!(p.len(), 100);
        assert_eq!(p[0], (0.01, 0.01));
        assert_eq!(p[99], (0.1, 0.1));
        assert_eq!(Grid::Wide.points().len(), 55);
        let f = fold_ranges(10, 3);
        assert_eq!(f, [0..3, 3..6, 6..10]);
    }

    #[test]
    fn grid_search_prefers_quiet_then_tight() {
        let mut v = Vec::new();
        for i in 0..50u32 {
            v.extend([10.0 + f64::from(i * 7 % 11), 50.0 + f64::from(i * 3 % 13)]);
        }
        let x = Array2::from_shape_vec((50, 2), v).unwrap();
        let grid = [(0.05, 0.1), (0.1, 0.1), (0.05, 1.0)];
        let (best, all) = grid_search(x.view(), 5, &grid, &|| {}).unwrap();
        assert_eq!(all.len(), 3);
        let min = all.iter().map(|s| s.fp_rate).fold(f64::INFINITY, f64::min);
        assert_eq!(best.fp_rate, min);
        assert!(grid_search(x.view(), 1, &grid, &|| {}).is_err());
    }
}
