//! Feature selection by Linear Discriminant Analysis, two classes at a time
//! (paper, section 4.1 and Table 1): a baseline scenario (idle) against one
//! stress scenario.
//!
//! The score is the first squared canonical correlation between the
//! features and the class indicator, the `ccr12` criterion of R's
//! `subselect` package that the paper used. For a subset S of features
//!
//! ```text
//! ccr12(S) = largest eigenvalue of T⁻¹B
//! ```
//!
//! with T the total and B the between-class scatter matrix of S. With two
//! classes of sizes n1, n2 (n = n1 + n2), class means m1, m2, overall mean
//! m = (n1·m1 + n2·m2)/n and d = m2 − m1:
//!
//! ```text
//! m1 − m = −(n2/n)·d,   m2 − m = (n1/n)·d
//! B = n1·(m1−m)(m1−m)' + n2·(m2−m)(m2−m)'
//!   = (n1·n2² + n2·n1²)/n² · dd' = (n1·n2/n) · dd'
//! ```
//!
//! B has rank 1, so T⁻¹B = (n1·n2/n)·(T⁻¹d)d' has one nonzero eigenvalue,
//! its trace:
//!
//! ```text
//! ccr12(S) = (n1·n2/n) · d'T⁻¹d
//! ```
//!
//! For one feature T is the total sum of squares and (n1·n2/n)·d² the
//! between-class sum of squares, so ccr12 = BSS/TSS ([`ccr12_univariate`]);
//! the unit tests check that both formulas agree. The value lies in [0, 1]:
//! d lies in the column space of T (it is a combination of the centred
//! rows), and 1 means the classes separate perfectly along some direction.
//!
//! The linear algebra (a Cholesky solve of T_S d) uses `nalgebra`: pure
//! Rust, so no LAPACK/OpenBLAS system libraries to install as
//! `ndarray-linalg` would need; well kept and widely used; and the
//! matrices here are tiny (|S| ≤ a few dozen), so no need for a
//! large-matrix library such as `faer`.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{Error, Result};

/// Relative ridge added to the diagonal of the (standardised) total
/// scatter matrix: T_S + ε·(trace/|S|)·I. Collinear features (a probe that
/// always fires with another) make T_S singular; the ridge keeps the
/// Cholesky solve defined and gives a redundant feature zero gain. Columns
/// are standardised to unit total sum of squares first, so trace/|S| = 1
/// and the ridge biases a score by about ε relative.
pub const RIDGE: f64 = 1e-9;

/// Greedy selection stops when the best addition improves the subset's
/// ccr12 by no more than this.
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

/// How counts are transformed before scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transform {
    /// `ln(1 + x)`, the default. LDA assumes roughly normal classes with a
    /// common covariance; raw probe counts are skewed, span orders of
    /// magnitude between probes and have a spread that grows with their
    /// level, so one busy window or one busy probe would dominate the
    /// scatter matrices. The log compresses that and keeps 0 at 0.
    #[default]
    Log1p,
    /// Raw counts, as the paper did.
    Raw,
}

impl Transform {
    /// Transformed copy of `x`. Fails on a value that is not finite or, for
    /// `ln(1 + x)`, negative (counts never are).
    pub fn apply(self, x: ArrayView2<f64>) -> Result<Array2<f64>> {
        for ((row, col), &v) in x.indexed_iter() {
            let bad = !v.is_finite() || (self == Transform::Log1p && v < 0.0);
            if bad {
                return Err(Error::Invalid(format!(
                    "row {}, feature column {}: {v} is not a count",
                    row + 1,
                    col + 1
                )));
            }
        }
        Ok(match self {
            Transform::Log1p => x.mapv(f64::ln_1p),
            Transform::Raw => x.to_owned(),
        })
    }

    /// How the transform is described in output headers.
    pub fn describe(self) -> &'static str {
        match self {
            Transform::Log1p => "ln(1+x) of the counts",
            Transform::Raw => "raw counts",
        }
    }
}

/// Squared canonical correlation of one feature with the class (baseline
/// vs other): between-class over total sum of squares. 0 when the feature
/// is constant over both classes (total SS 0) or a class is empty.
pub fn ccr12_univariate(x_base: ArrayView1<f64>, x_other: ArrayView1<f64>) -> f64 {
    let (n1, n2) = (x_base.len() as f64, x_other.len() as f64);
    if x_base.is_empty() || x_other.is_empty() || is_constant(x_base, x_other) {
        return 0.0;
    }
    let n = n1 + n2;
    let (m1, m2) = (x_base.sum() / n1, x_other.sum() / n2);
    let m = (x_base.sum() + x_other.sum()) / n;
    let tss: f64 = x_base
        .iter()
        .chain(x_other.iter())
        .map(|v| (v - m).powi(2))
        .sum();
    let bss = n1 * (m1 - m).powi(2) + n2 * (m2 - m).powi(2);
    if tss <= 0.0 {
        return 0.0;
    }
    (bss / tss).clamp(0.0, 1.0)
}

/// Exactly constant over both classes. An exact test: a rounding-level TSS
/// of a constant column would otherwise give a meaningless ratio.
fn is_constant(a: ArrayView1<f64>, b: ArrayView1<f64>) -> bool {
    let mut all = a.iter().chain(b.iter());
    match all.next() {
        Some(&first) => all.all(|&v| v == first),
        None => true,
    }
}

/// [`ccr12_univariate`] of every column.
///
/// # Panics
/// When `base` and `other` have different numbers of columns.
pub fn univariate_scores(base: ArrayView2<f64>, other: ArrayView2<f64>) -> Vec<f64> {
    assert_eq!(base.ncols(), other.ncols(), "column count mismatch");
    (0..base.ncols())
        .map(|j| ccr12_univariate(base.column(j), other.column(j)))
        .collect()
}

/// The multivariate ccr12 of column subsets for one pair of classes.
///
/// Holds both classes stacked, centred on the overall mean and scaled to
/// unit total sum of squares per column (ccr12 does not change under a
/// per-column affine map, and unit scale makes the ridge comparable across
/// features).
#[derive(Debug, Clone)]
pub struct Criterion {
    /// n × p standardised data; columns of constant features are all zero.
    z: Array2<f64>,
    /// Standardised mean difference (other − baseline) per column.
    d: Array1<f64>,
    /// Feature varies somewhere (a constant one is never chosen).
    varying: Vec<bool>,
    /// n1·n2/n.
    weight: f64,
}

impl Criterion {
    /// # Panics
    /// When `base` and `other` have different numbers of columns.
    pub fn new(base: ArrayView2<f64>, other: ArrayView2<f64>) -> Self {
        assert_eq!(base.ncols(), other.ncols(), "column count mismatch");
        let (n1, n2, p) = (base.nrows(), other.nrows(), base.ncols());
        let n = n1 + n2;
        let mut z = Array2::zeros((n, p));
        z.slice_mut(ndarray::s![..n1, ..]).assign(&base);
        z.slice_mut(ndarray::s![n1.., ..]).assign(&other);
        let mut d = Array1::zeros(p);
        let mut varying = vec![false; p];
        let usable = n1 > 0 && n2 > 0;
        for (j, mut col) in z.axis_iter_mut(Axis(1)).enumerate() {
            if !usable || is_constant(base.column(j), other.column(j)) {
                col.fill(0.0);
                continue;
            }
            let mean = col.sum() / n as f64;
            col.mapv_inplace(|v| v - mean);
            let tss = col.dot(&col);
            if tss <= 0.0 {
                col.fill(0.0);
                continue;
            }
            col.mapv_inplace(|v| v / tss.sqrt());
            let m1 = col.slice(ndarray::s![..n1]).sum() / n1 as f64;
            let m2 = col.slice(ndarray::s![n1..]).sum() / n2 as f64;
            d[j] = m2 - m1;
            varying[j] = true;
        }
        let weight = if usable {
            (n1 as f64) * (n2 as f64) / n as f64
        } else {
            0.0
        };
        Criterion {
            z,
            d,
            varying,
            weight,
        }
    }

    /// Number of features (columns).
    pub fn features(&self) -> usize {
        self.d.len()
    }

    /// Whether feature `j` varies (a constant feature scores 0).
    pub fn is_varying(&self, j: usize) -> bool {
        self.varying[j]
    }

    /// ccr12 of the columns in `subset` (0 for the empty set).
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn ccr12(&self, subset: &[usize]) -> f64 {
        let cols: Vec<ArrayView1<f64>> = subset.iter().map(|&j| self.z.column(j)).collect();
        let k = subset.len();
        let t = nalgebra::DMatrix::from_fn(k, k, |a, b| cols[a].dot(&cols[b]));
        self.quadratic_form(t, subset)
    }

    /// (n1·n2/n)·d_S'(T_S + ridge)⁻¹d_S, clamped to [0, 1].
    fn quadratic_form(&self, t: nalgebra::DMatrix<f64>, subset: &[usize]) -> f64 {
        let k = subset.len();
        if k == 0 || self.weight == 0.0 {
            return 0.0;
        }
        let d = nalgebra::DVector::from_iterator(k, subset.iter().map(|&j| self.d[j]));
        let trace = t.trace();
        if trace <= 0.0 {
            return 0.0; // only constant columns
        }
        let scale = trace / k as f64;
        // The ridge is tiny; should rounding still leave T_S indefinite,
        // grow it until the factorisation holds.
        let mut ridge = RIDGE * scale;
        for _ in 0..8 {
            let mut tr = t.clone();
            for i in 0..k {
                tr[(i, i)] += ridge;
            }
            if let Some(chol) = tr.cholesky() {
                let q = d.dot(&chol.solve(&d));
                return (self.weight * q).clamp(0.0, 1.0);
            }
            ridge *= 100.0;
        }
        0.0
    }
}

/// One step of the greedy forward selection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Column index of the feature added.
    pub feature: usize,
    /// ccr12 of the subset after adding it.
    pub ccr12: f64,
}

/// What counting each column needs and how much may be spent: each column
/// needs some charges (pieces of work, e.g. a probe's hits), each charge is
/// paid once however many chosen columns need it, and the greedy search only
/// adds a column whose unpaid charges keep the total within `limit`. Costs
/// are in any unit (vmwatch select uses percent of a CPU); a column whose
/// charges are all paid is always affordable.
#[derive(Debug, Clone, Copy)]
pub struct Budget<'a> {
    /// Indices into `charges`, per column.
    pub needs: &'a [Vec<usize>],
    /// Cost of each charge.
    pub charges: &'a [f64],
    /// Most the chosen columns may cost together.
    pub limit: f64,
}

impl Budget<'_> {
    /// What column `j` adds to the charges `paid`.
    fn added(&self, j: usize, paid: &[bool]) -> f64 {
        self.needs[j]
            .iter()
            .filter(|&&c| !paid[c])
            .map(|&c| self.charges[c])
            .sum()
    }
}

/// Greedy forward selection on the subset's ccr12: start empty, add the
/// feature that maximises the enlarged subset's ccr12 (lowest index on a
/// tie), until `k` features are chosen or the best gain is ≤ `tolerance`.
/// Constant features are never chosen, nor (with a `budget`) features that
/// would take the subset's cost over the limit.
///
/// # Panics
/// When the budget names fewer columns than the criterion has, or a charge
/// it does not price.
pub fn greedy_forward(
    criterion: &Criterion,
    k: usize,
    tolerance: f64,
    budget: Option<Budget<'_>>,
) -> Vec<Step> {
    let p = criterion.features();
    let z = &criterion.z;
    // Inner products of every column with each chosen one: one pass over
    // the data per step instead of one per candidate.
    let diag: Vec<f64> = z.axis_iter(Axis(1)).map(|c| c.dot(&c)).collect();
    let mut gram: Vec<Array1<f64>> = Vec::new();
    let mut chosen: Vec<usize> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut current = 0.0;
    let mut spent = 0.0;
    let mut paid = vec![false; budget.map_or(0, |b| b.charges.len())];
    let affordable = |j: usize, spent: f64, paid: &[bool]| {
        budget.is_none_or(|b| spent + b.added(j, paid) <= b.limit)
    };
    while chosen.len() < k {
        let s = chosen.len();
        let mut best: Option<(usize, f64)> = None;
        for j in 0..p {
            if !criterion.varying[j] || chosen.contains(&j) || !affordable(j, spent, &paid) {
                continue;
            }
            let mut subset = chosen.clone();
            subset.push(j);
            let t = nalgebra::DMatrix::from_fn(s + 1, s + 1, |a, b| match (a == s, b == s) {
                (true, true) => diag[j],
                (true, false) => gram[b][j],
                (false, true) => gram[a][j],
                (false, false) => gram[a][chosen[b]],
            });
            let score = criterion.quadratic_form(t, &subset);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((j, score));
            }
        }
        match best {
            Some((j, score)) if score - current > tolerance => {
                gram.push(z.t().dot(&z.column(j)));
                chosen.push(j);
                if let Some(b) = budget {
                    spent += b.added(j, &paid);
                    for &c in &b.needs[j] {
                        paid[c] = true;
                    }
                }
                steps.push(Step {
                    feature: j,
                    ccr12: score,
                });
                current = score;
            }
            _ => break,
        }
    }
    steps
}

/// Scores of one pair (baseline vs other) over the same columns.
#[derive(Debug, Clone)]
pub struct PairScores {
    /// Univariate ccr12 per column.
    pub univariate: Vec<f64>,
    /// Greedy multivariate subset, in order of addition.
    pub greedy: Vec<Step>,
}

impl PairScores {
    /// Columns ranked by univariate score, best first (ties: lower index),
    /// at most `k`, leaving out zero scores.
    pub fn top_univariate(&self, k: usize) -> Vec<(usize, f64)> {
        let mut ranked: Vec<(usize, f64)> = self
            .univariate
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, s)| s > 0.0)
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        ranked
    }
}

/// Transforms both classes, scores every column and picks a greedy subset
/// of at most `k` features (within `budget`, if given).
///
/// # Panics
/// When `base` and `other` have different numbers of columns, or the
/// budget names fewer columns.
pub fn score_pair(
    base: ArrayView2<f64>,
    other: ArrayView2<f64>,
    k: usize,
    transform: Transform,
    budget: Option<Budget<'_>>,
) -> Result<PairScores> {
    let base = transform.apply(base)?;
    let other = transform.apply(other)?;
    let univariate = univariate_scores(base.view(), other.view());
    let criterion = Criterion::new(base.view(), other.view());
    let greedy = greedy_forward(&criterion, k, DEFAULT_TOLERANCE, budget);
    Ok(PairScores { univariate, greedy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1, Array2};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-8
    }

    #[test]
    fn perfect_separation_scores_one() {
        let s = ccr12_univariate(
            array![1.0, 1.0, 1.0, 1.0].view(),
            Array1::from_elem(4, 3.0).view(),
        );
        assert!(close(s, 1.0), "{s}");
    }

    #[test]
    fn hand_computed_ratio() {
        // Baseline [0, 2], other [1, 3]: class means 1 and 2, overall 1.5.
        // TSS = 1.5² + 0.5² + 0.5² + 1.5² = 2.25 + 0.25 + 0.25 + 2.25 = 5.
        // BSS = 2·(1 − 1.5)² + 2·(2 − 1.5)² = 0.5 + 0.5 = 1.
        // ccr12 = 1/5.
        let s = ccr12_univariate(array![0.0, 2.0].view(), array![1.0, 3.0].view());
        assert!(close(s, 0.2), "{s}");
        // Also (n1·n2/n)·d²/TSS = (2·2/4)·1²/5.
        let c = Criterion::new(array![[0.0], [2.0]].view(), array![[1.0], [3.0]].view());
        assert!(close(c.ccr12(&[0]), 0.2));
    }

    #[test]
    fn unequal_class_sizes() {
        // Baseline [0, 0, 0], other [3]: means 0 and 3, overall 0.75.
        // TSS = 3·0.75² + 2.25² = 1.6875 + 5.0625 = 6.75.
        // BSS = 3·0.75² + 1·2.25² = 6.75 → 1 (no within-class spread).
        // Baseline [0, 1, 2], other [4]: overall 7/4; TSS = 1.75² + 0.75²
        // + 0.25² + 2.25² = 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75;
        // BSS = (3·1/4)·(4 − 1)² = 6.75 → 6.75/8.75 = 27/35.
        let s = ccr12_univariate(array![0.0, 0.0, 0.0].view(), array![3.0].view());
        assert!(close(s, 1.0), "{s}");
        let s = ccr12_univariate(array![0.0, 1.0, 2.0].view(), array![4.0].view());
        assert!(close(s, 27.0 / 35.0), "{s}");
    }

    #[test]
    fn constant_column_scores_zero() {
        assert_eq!(
            ccr12_univariate(
                Array1::from_elem(3, 5.0).view(),
                Array1::from_elem(4, 5.0).view()
            ),
            0.0
        );
        assert_eq!(
            ccr12_univariate(
                Array1::from_elem(7, 0.1).view(),
                Array1::from_elem(3, 0.1).view()
            ),
            0.0
        );
        assert_eq!(
            ccr12_univariate(Array1::<f64>::zeros(0).view(), array![1.0, 2.0].view()),
            0.0
        );
        let c = Criterion::new(array![[5.0], [5.0]].view(), array![[5.0], [5.0]].view());
        assert_eq!(c.ccr12(&[0]), 0.0);
        assert!(!c.is_varying(0));
        assert!(greedy_forward(&c, 3, DEFAULT_TOLERANCE, None).is_empty());
    }

    #[test]
    fn identical_classes_score_zero() {
        let s = ccr12_univariate(array![1.0, 2.0, 3.0].view(), array![1.0, 2.0, 3.0].view());
        assert!(close(s, 0.0), "{s}");
    }

    /// Deterministic pseudo-random data (no RNG dependency).
    fn noise(n: usize, p: usize, seed: u64) -> Array2<f64> {
        let mut state = seed;
        Array2::from_shape_fn((n, p), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 10.0
        })
    }

    #[test]
    fn multivariate_equals_univariate_for_one_column() {
        let base = noise(30, 4, 1);
        let mut other = noise(20, 4, 2);
        other.column_mut(2).mapv_inplace(|v| v + 4.0);
        let c = Criterion::new(base.view(), other.view());
        for j in 0..4 {
            let u = ccr12_univariate(base.column(j), other.column(j));
            let m = c.ccr12(&[j]);
            assert!((u - m).abs() < 1e-7, "column {j}: {u} vs {m}");
        }
    }

    #[test]
    fn two_feature_ccr12_by_hand() {
        // x1 = [0, 1 | 1, 2], x2 = [1, 0 | 2, 1]: each alone has means 0.5
        // and 1.5, TSS 2, BSS 1 → 0.5. Centred: x1 = [-1, 0, 0, 1],
        // x2 = [0, -1, 1, 0]; T = diag(2, 2); d = (1, 1);
        // ccr12 = (2·2/4)·d'T⁻¹d = 1·(1/2 + 1/2) = 1. Indeed x1 + x2 is
        // [1, 1 | 3, 3]: a perfectly separating direction.
        let base = array![[0.0, 1.0], [1.0, 0.0]];
        let other = array![[1.0, 2.0], [2.0, 1.0]];
        let c = Criterion::new(base.view(), other.view());
        assert!(close(c.ccr12(&[0]), 0.5));
        assert!(close(c.ccr12(&[1]), 0.5));
        assert!((c.ccr12(&[0, 1]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn closed_form_equals_largest_eigenvalue_of_t_inv_b() {
        // Independent check of the derivation: build T and B from their
        // definitions on raw (unstandardised) data and take the largest
        // eigenvalue of T⁻¹B as that of L⁻¹BL⁻ᵀ (T = LLᵀ, symmetric).
        let base = noise(15, 3, 11);
        let mut other = noise(9, 3, 12);
        other.column_mut(1).mapv_inplace(|v| v * 0.5 + 3.0);
        let all = ndarray::concatenate(Axis(0), &[base.view(), other.view()]).unwrap();
        let m = all.mean_axis(Axis(0)).unwrap();
        let m1 = base.mean_axis(Axis(0)).unwrap();
        let m2 = other.mean_axis(Axis(0)).unwrap();
        let c = &all - &m;
        let t = nalgebra::DMatrix::from_fn(3, 3, |a, b| c.column(a).dot(&c.column(b)));
        let b = nalgebra::DMatrix::from_fn(3, 3, |a, b| {
            15.0 * (m1[a] - m[a]) * (m1[b] - m[b]) + 9.0 * (m2[a] - m[a]) * (m2[b] - m[b])
        });
        let l = t.cholesky().unwrap().l();
        let li = l.try_inverse().unwrap();
        let sym = &li * b * li.transpose();
        let eig = sym.symmetric_eigen().eigenvalues;
        let largest = eig.iter().copied().fold(f64::MIN, f64::max);
        let crit = Criterion::new(base.view(), other.view());
        let closed = crit.ccr12(&[0, 1, 2]);
        assert!((largest - closed).abs() < 1e-7, "{largest} vs {closed}");
        // Rank 1: the other eigenvalues vanish.
        assert!(eig.iter().filter(|e| e.abs() > 1e-9).count() == 1, "{eig}");
    }

    #[test]
    fn ccr12_never_decreases_when_adding() {
        let base = noise(25, 5, 3);
        let other = noise(25, 5, 4);
        let c = Criterion::new(base.view(), other.view());
        let mut prev = 0.0;
        for k in 1..=5 {
            let subset: Vec<usize> = (0..k).collect();
            let s = c.ccr12(&subset);
            assert!(s >= prev - 1e-9 && s <= 1.0, "{prev} -> {s}");
            prev = s;
        }
    }

    #[test]
    fn collinear_features_get_no_gain() {
        // Column 1 is twice column 0: T is singular; the ridge keeps the
        // solve defined and the duplicate adds nothing.
        let mut base = noise(20, 3, 5);
        let mut other = noise(20, 3, 6);
        other.column_mut(0).mapv_inplace(|v| v + 2.0);
        for x in [&mut base, &mut other] {
            let c0 = x.column(0).to_owned();
            x.column_mut(1).assign(&(&c0 * 2.0));
        }
        let c = Criterion::new(base.view(), other.view());
        let one = c.ccr12(&[0]);
        let both = c.ccr12(&[0, 1]);
        assert!((both - one).abs() < 1e-6, "{one} vs {both}");
        let steps = greedy_forward(&c, 3, DEFAULT_TOLERANCE, None);
        let picked: Vec<usize> = steps.iter().map(|s| s.feature).collect();
        assert!(!(picked.contains(&0) && picked.contains(&1)), "{picked:?}");
    }

    #[test]
    fn greedy_picks_the_separating_feature_first_and_stops() {
        // Column 0: constant; 1: noise; 2: separates perfectly; 3: noise.
        let mut base = noise(20, 4, 7);
        let mut other = noise(20, 4, 8);
        base.column_mut(0).fill(3.0);
        other.column_mut(0).fill(3.0);
        base.column_mut(2).mapv_inplace(|v| v * 0.001);
        other.column_mut(2).mapv_inplace(|v| 50.0 + v * 0.001);
        let c = Criterion::new(base.view(), other.view());
        let steps = greedy_forward(&c, 3, DEFAULT_TOLERANCE, None);
        assert_eq!(steps[0].feature, 2);
        // Already ≈ 1 (the ridge biases it by about 1e-9): nothing can
        // improve it, so the selection stops at one feature.
        assert!(steps[0].ccr12 > 1.0 - 1e-6, "{steps:?}");
        assert_eq!(steps.len(), 1, "{steps:?}");
    }

    #[test]
    fn budget_skips_features_that_cost_too_much() {
        // Column 2 separates best but costs more than the limit; column 1
        // separates less and fits; column 0 is noise and free.
        let mut base = noise(30, 3, 11);
        let mut other = noise(30, 3, 12);
        other.column_mut(1).mapv_inplace(|v| v + 1.0);
        base.column_mut(2).mapv_inplace(|v| v * 0.01);
        other.column_mut(2).mapv_inplace(|v| 10.0 + v * 0.01);
        let c = Criterion::new(base.view(), other.view());
        let free = greedy_forward(&c, 1, DEFAULT_TOLERANCE, None);
        assert_eq!(free[0].feature, 2);
        let (needs, charges) = ([vec![], vec![0], vec![1]], [0.4, 0.7]);
        let limited = |limit| {
            greedy_forward(
                &c,
                3,
                DEFAULT_TOLERANCE,
                Some(Budget {
                    needs: &needs,
                    charges: &charges,
                    limit,
                }),
            )
            .iter()
            .map(|s| s.feature)
            .collect::<Vec<_>>()
        };
        assert!(!limited(0.5).contains(&2));
        assert_eq!(limited(0.5)[0], 1);
        // Enough for 2 alone but not 1 and 2 together: 2 first, then not 1.
        let picked = limited(0.8);
        assert_eq!(picked[0], 2);
        assert!(!picked.contains(&1), "{picked:?}");
        // Nothing affordable but the free column.
        assert!(limited(0.1).iter().all(|&j| j == 0));
    }

    #[test]
    fn a_charge_already_paid_is_free() {
        // Columns 1 and 2 both need charge 0 (one probe's hits, say); 2
        // needs charge 1 too. Within 0.8 both fit: 1 adds nothing once 2
        // has paid for charge 0. (Tolerance -1: every affordable column.)
        let mut base = noise(30, 3, 21);
        let mut other = noise(30, 3, 22);
        other.column_mut(1).mapv_inplace(|v| v + 0.8);
        base.column_mut(2).mapv_inplace(|v| v * 0.01);
        other.column_mut(2).mapv_inplace(|v| 10.0 + v * 0.01);
        let c = Criterion::new(base.view(), other.view());
        let (needs, charges) = ([vec![], vec![0], vec![0, 1]], [0.5, 0.3]);
        let budget = Budget {
            needs: &needs,
            charges: &charges,
            limit: 0.8,
        };
        let picked: Vec<usize> = greedy_forward(&c, 3, -1.0, Some(budget))
            .iter()
            .map(|s| s.feature)
            .collect();
        assert!(picked.contains(&1) && picked.contains(&2), "{picked:?}");
        // Charged separately (0.5 + 0.8), they would not both fit.
        let (needs, charges) = ([vec![], vec![0], vec![1, 2]], [0.5, 0.3, 0.5]);
        let apart = Budget {
            needs: &needs,
            charges: &charges,
            limit: 0.8,
        };
        let picked: Vec<usize> = greedy_forward(&c, 3, -1.0, Some(apart))
            .iter()
            .map(|s| s.feature)
            .collect();
        assert!(!(picked.contains(&1) && picked.contains(&2)), "{picked:?}");
    }

    #[test]
    fn greedy_scores_increase_and_respect_k() {
        let base = noise(40, 6, 9);
        let mut other = noise(40, 6, 10);
        for j in 0..6 {
            other.column_mut(j).mapv_inplace(|v| v + j as f64 * 0.5);
        }
        let c = Criterion::new(base.view(), other.view());
        let steps = greedy_forward(&c, 3, DEFAULT_TOLERANCE, None);
        assert_eq!(steps.len(), 3);
        // The first step is the best univariate feature.
        let uni = univariate_scores(base.view(), other.view());
        let best = (0..6).max_by(|&a, &b| uni[a].total_cmp(&uni[b])).unwrap();
        assert_eq!(steps[0].feature, best);
        assert!(steps.windows(2).all(|w| w[1].ccr12 > w[0].ccr12));
        // Each step's score is the subset's criterion.
        let subset: Vec<usize> = steps.iter().map(|s| s.feature).collect();
        assert!((c.ccr12(&subset) - steps[2].ccr12).abs() < 1e-9);
    }

    #[test]
    fn transform_log1p_and_raw() {
        let x = array![[0.0, 1.0], [9.0, 99.0]];
        let l = Transform::Log1p.apply(x.view()).unwrap();
        assert_eq!(l[[0, 0]], 0.0);
        assert!(close(l[[1, 1]], 100f64.ln()));
        assert_eq!(Transform::Raw.apply(x.view()).unwrap(), x);
        assert!(Transform::Log1p.apply(array![[-1.0]].view()).is_err());
        assert!(Transform::Raw.apply(array![[f64::NAN]].view()).is_err());
    }

    #[test]
    fn score_pair_ranks_and_selects() {
        let base = array![[10.0, 0.0, 5.0], [12.0, 0.0, 6.0], [11.0, 0.0, 5.0]];
        let other = array![[1000.0, 0.0, 6.0], [1100.0, 0.0, 5.0], [900.0, 0.0, 6.0]];
        let s = score_pair(base.view(), other.view(), 2, Transform::Log1p, None).unwrap();
        assert_eq!(s.univariate[1], 0.0);
        assert_eq!(s.top_univariate(5)[0].0, 0);
        assert_eq!(s.top_univariate(5).len(), 2); // the constant one is left out
        assert_eq!(s.greedy[0].feature, 0);
    }
}
