//! Parameter search for the one-class SVM, the paper's way: k-fold
//! cross-validation on normal windows only, with the false-positive rate as
//! the target, over a grid of (nu, gamma).

use ndarray::{Array2, ArrayView2, Axis};

use crate::dataset::Table;
use crate::error::{Error, Result};
use crate::features::{FeatureList, Source};
use crate::model::{Model, Smoothing, TrainingSummary};
use crate::qemu::QemuBuild;

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

/// The held-out rows of each fold of a cross-validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folds(Vec<std::ops::Range<usize>>);

impl Folds {
    /// `folds` contiguous folds of `rows` windows ([`fold_ranges`]).
    pub fn contiguous(rows: usize, folds: usize) -> Result<Self> {
        check_folds(rows, folds)?;
        Ok(Self(fold_ranges(rows, folds)))
    }

    /// `folds` folds of whole groups: the rows are groups of `sizes`
    /// windows one after another (the normal windows of each boot), and
    /// each fold holds out whole groups, so the search scores each (nu,
    /// gamma) on boots its models did not learn from, as the evaluation
    /// then does. With fewer groups than folds, contiguous folds of the
    /// rows.
    pub fn by_group(sizes: &[usize], folds: usize) -> Result<Self> {
        let rows = sizes.iter().sum();
        let groups = sizes.iter().filter(|&&n| n > 0).count();
        if groups < folds {
            return Self::contiguous(rows, folds);
        }
        check_folds(rows, folds)?;
        let mut starts = Vec::with_capacity(sizes.len() + 1);
        let mut at = 0;
        for &n in sizes.iter().filter(|&&n| n > 0) {
            starts.push(at);
            at += n;
        }
        starts.push(at);
        Ok(Self(
            (0..folds)
                .map(|f| starts[f * groups / folds]..starts[(f + 1) * groups / folds])
                .collect(),
        ))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each fold's held-out rows.
    pub fn ranges(&self) -> &[std::ops::Range<usize>] {
        &self.0
    }

    /// Fails unless the folds cover exactly `rows` windows.
    fn check(&self, rows: usize) -> Result<()> {
        if self.0.last().map_or(0, |r| r.end) != rows {
            return Err(Error::Invalid(format!(
                "cross-validation folds of {} windows given for {rows}",
                self.0.last().map_or(0, |r| r.end)
            )));
        }
        check_folds(rows, self.0.len())
    }
}

/// Mean false-positive rate over the held-out folds for one (nu, gamma).
pub fn cv_fp_rate(raw: ArrayView2<f64>, folds: &Folds, nu: f64, gamma: f64) -> Result<f64> {
    folds.check(raw.nrows())?;
    let mut rates = Vec::with_capacity(folds.len());
    for test in folds.ranges() {
        let train = without(raw, test);
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
    folds: &Folds,
    grid: &[(f64, f64)],
    progress: &(dyn Fn() + Sync),
) -> Result<(Scored, Vec<Scored>)> {
    folds.check(raw.nrows())?;
    if raw.nrows() < folds.len() * 2 {
        return Err(Error::Invalid(format!(
            "{} training windows are too few for {}-fold cross-validation",
            raw.nrows(),
            folds.len()
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
    fn group_folds_hold_out_whole_groups() {
        // Five boots of 4, 6, 5, 0 and 5 normal windows, 3 folds: the empty
        // boot is no group, every fold ends at a boot's end.
        let f = Folds::by_group(&[4, 6, 5, 0, 5], 3).unwrap();
        assert_eq!(f.ranges(), [0..4, 4..10, 10..20]);
        // As many folds as boots: leave one boot out.
        let f = Folds::by_group(&[4, 6, 5], 3).unwrap();
        assert_eq!(f.ranges(), [0..4, 4..10, 10..15]);
        // Fewer boots than folds: contiguous folds of the rows.
        let f = Folds::by_group(&[10], 3).unwrap();
        assert_eq!(f, Folds::contiguous(10, 3).unwrap());
        assert!(Folds::by_group(&[1], 3).is_err());
        // Folds for other rows than the windows given are refused.
        let x = Array2::<f64>::zeros((12, 1));
        let err = cv_fp_rate(x.view(), &f, 0.1, 0.1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cross-validation folds of 10 windows given for 12"
        );
    }

    #[test]
    fn a_list_counted_among_other_tracked_probes_is_refused() {
        // Recorded with --track a,b,c: every transition among the three.
        let features: Vec<String> =
            crate::features::transitions(&["a", "b", "c"].map(String::from))
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect();
        let table = Table {
            x: Array2::zeros((0, features.len())),
            features,
            keys: Vec::new(),
        };
        let list = |text: &str| {
            FeatureChoice::List(crate::features::parse_feature_list("f", text).unwrap())
        };
        // Selected from such files: its track: lines say so.
        let ok = list("seq:a>b\ntrack:a\ntrack:b\ntrack:c\n");
        assert_eq!(ok.resolve(&[&table]).unwrap(), ["seq:a>b"]);
        // A list whose seq: features were counted among a and b only.
        let err = list("seq:a>b\ntrack:a\ntrack:b\n")
            .resolve(&[&table])
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the feature list's seq: features were counted among the tracked probes a, b but \
                 the input files tracked a, b, c"
            ),
            "{err}"
        );
        // A list that does not say takes a subset of the files' columns
        // (the model records their tracked set).
        assert!(list("seq:a>b\n").resolve(&[&table]).is_ok());
        // Lists without seq: features do not care what was tracked.
        let counts = Table {
            x: Array2::zeros((0, 1)),
            features: vec!["qemu:a".into()],
            keys: Vec::new(),
        };
        assert!(list("qemu:a\n").resolve(&[&table, &counts]).is_ok());
        assert!(list("seq:a>b\ntrack:a\ntrack:b\ntrack:c\nqemu:a\n")
            .resolve(&[&table, &counts])
            .is_ok());
    }

    #[test]
    fn grid_search_prefers_quiet_then_tight() {
        let mut v = Vec::new();
        for i in 0..50u32 {
            v.extend([10.0 + f64::from(i * 7 % 11), 50.0 + f64::from(i * 3 % 13)]);
        }
        let x = Array2::from_shape_vec((50, 2), v).unwrap();
        let grid = [(0.05, 0.1), (0.1, 0.1), (0.05, 1.0)];
        let folds = Folds::contiguous(50, 5).unwrap();
        let (best, all) = grid_search(x.view(), &folds, &grid, &|| {}).unwrap();
        assert_eq!(all.len(), 3);
        let min = all.iter().map(|s| s.fp_rate).fold(f64::INFINITY, f64::min);
        assert_eq!(best.fp_rate, min);
        // 10 folds of 5 windows each leave too few to learn from.
        let ten = Folds::contiguous(50, 10).unwrap();
        assert!(grid_search(x.view(), &ten, &grid, &|| {}).is_ok());
        let small = x.slice(ndarray::s![..15, ..]);
        let ten = Folds::contiguous(15, 10).unwrap();
        assert!(grid_search(small, &ten, &grid, &|| {}).is_err());
    }
}

/// Which features to learn from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureChoice {
    /// These, in this order (a `--features` list, with its tracked set).
    List(FeatureList),
    /// Every feature of these sources (empty: any) that is nonzero in some
    /// row of the given tables.
    Nonzero(Vec<Source>),
}

impl FeatureChoice {
    /// The features to use for `tables` (the training tables, for
    /// `Nonzero`). Fails when nothing is left, when none of a list is a
    /// column of the tables, or when the list's `seq:` features were chosen
    /// with another tracked set than the tables were counted with.
    pub fn resolve(&self, tables: &[&Table]) -> Result<Vec<String>> {
        if let FeatureChoice::List(list) = self {
            check_tracked(list, tables)?;
        }
        let features = match self {
            FeatureChoice::List(list) => list.features.clone(),
            FeatureChoice::Nonzero(sources) => Table::nonzero_features(tables, sources),
        };
        if features.is_empty() {
            return Err(Error::Invalid(
                "every feature (of the chosen sources) is zero in the input files: nothing to \
                 learn from"
                    .into(),
            ));
        }
        if let FeatureChoice::List(_) = self {
            let missing = features
                .iter()
                .filter(|f| !tables.iter().any(|t| t.features.contains(f)))
                .count();
            if missing == features.len() {
                return Err(Error::Invalid(
                    "none of the requested features is a column of the input files (--features \
                     FILE or --source SOURCES chooses others)"
                        .into(),
                ));
            }
            if missing > 0 {
                tracing::warn!(
                    "{missing} requested features are absent (zeros) in the input files"
                );
            }
        }
        Ok(features)
    }
}

/// A list that says what its `seq:` features were counted among (`track:`
/// lines) means that only for tables that tracked the same probes: a
/// transition counts the previous *tracked* hit, so another set counts
/// other pairs under the same names. A list without them takes the tables'
/// tracked set (recorded in the model), as a subset of their columns.
fn check_tracked(list: &FeatureList, tables: &[&Table]) -> Result<()> {
    let seq = list
        .features
        .iter()
        .any(|f| Source::of(f) == Some(Source::Seq));
    if !seq || list.track.is_empty() {
        return Ok(());
    }
    let want: std::collections::BTreeSet<String> = list.track.iter().cloned().collect();
    for t in tables {
        let have: std::collections::BTreeSet<String> = t.tracked().into_iter().collect();
        // Tables without seq: columns have all-zero transitions (warned as absent).
        if !have.is_empty() && have != want {
            let names = |s: &std::collections::BTreeSet<String>| {
                s.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            return Err(Error::Invalid(format!(
                "the feature list's seq: features were counted among the tracked probes {} but \
                 the input files tracked {}: the same transition names count different pairs \
                 (record with the list's track: lines, or select the features again from these \
                 files)",
                names(&want),
                names(&have)
            )));
        }
    }
    Ok(())
}

/// The one-class SVM's parameters: given, or searched on a grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SvmParams {
    Fixed { nu: f64, gamma: f64 },
    Search(Grid),
}

/// Parameters chosen by [`choose_params`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen {
    pub nu: f64,
    pub gamma: f64,
    /// The grid searched, `None` for fixed parameters.
    pub grid: Option<Grid>,
    /// Mean CV false-positive rate of the chosen point (grid search only).
    pub fp_rate: Option<f64>,
}

impl Chosen {
    /// How the parameters were chosen, for reports: `fixed`, or `paper
    /// grid, 1.33% CV false positives`.
    pub fn describe(&self) -> String {
        match (self.grid, self.fp_rate) {
            (Some(g), Some(fp)) => {
                format!("{} grid, {:.2}% CV false positives", g.name(), fp * 100.0)
            }
            _ => "fixed".into(),
        }
    }
}

/// Fixed parameters as they are; otherwise the grid search on `raw`
/// (`progress` is called once per grid point scored).
pub fn choose_params(
    raw: ArrayView2<f64>,
    folds: &Folds,
    params: SvmParams,
    progress: &(dyn Fn() + Sync),
) -> Result<Chosen> {
    match params {
        SvmParams::Fixed { nu, gamma } => Ok(Chosen {
            nu,
            gamma,
            grid: None,
            fp_rate: None,
        }),
        SvmParams::Search(grid) => {
            let (best, _) = grid_search(raw, folds, &grid.points(), progress)?;
            Ok(Chosen {
                nu: best.nu,
                gamma: best.gamma,
                grid: Some(grid),
                fp_rate: Some(best.fp_rate),
            })
        }
    }
}

/// Fewest windows a model is trained on.
pub const MIN_TRAINING_WINDOWS: usize = 10;

/// The windows a model learns from, in the chosen features' columns.
#[derive(Debug, Clone)]
pub struct TrainingSet {
    pub features: Vec<String>,
    /// Counts, windows × features.
    pub raw: Array2<f64>,
    /// The QEMU builds the windows were counted on (see
    /// [`Table::qemu_builds`]), recorded in the model.
    pub qemu_builds: Vec<QemuBuild>,
    /// Which features were estimated in some windows, recorded in the model.
    pub estimated: Vec<crate::model::Estimated>,
    /// The probes the windows' `seq:` transitions were tracked with (when a
    /// chosen feature is one), recorded in the model.
    pub tracked: Vec<String>,
}

impl TrainingSet {
    /// The chosen features of `table`'s windows; too few windows, or no
    /// usable feature, is an error.
    pub fn new(table: &Table, features: &FeatureChoice) -> Result<Self> {
        if table.len() < MIN_TRAINING_WINDOWS {
            return Err(Error::Invalid(format!(
                "{} training windows are too few (need at least {MIN_TRAINING_WINDOWS})",
                table.len()
            )));
        }
        let features = features.resolve(&[table])?;
        let raw = table.project(&features);
        let seq = features.iter().any(|f| Source::of(f) == Some(Source::Seq));
        Ok(Self {
            tracked: if seq { table.tracked() } else { Vec::new() },
            estimated: table.estimated(&features),
            features,
            raw,
            qemu_builds: table.qemu_builds(),
        })
    }
}

/// What [`train`] needs besides the windows.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub params: SvmParams,
    pub folds: usize,
    /// Stored in the model as its default.
    pub smoothing: Smoothing,
    /// The training files, recorded in the model.
    pub files: Vec<String>,
}

/// A trained model and how its parameters were found.
#[derive(Debug, Clone)]
pub struct Trained {
    pub model: Model,
    pub chosen: Chosen,
    /// The chosen parameters' mean CV false-positive rate (measured for
    /// fixed parameters too).
    pub fp_rate: f64,
}

/// Fits a model on normal windows (`vmwatch train`): parameters chosen
/// (`progress` is called per grid point), their CV false-positive rate,
/// the fit.
pub fn train(
    set: TrainingSet,
    config: &TrainConfig,
    progress: &(dyn Fn() + Sync),
) -> Result<Trained> {
    let TrainingSet {
        features,
        raw,
        qemu_builds,
        estimated,
        tracked,
    } = set;
    let folds = Folds::contiguous(raw.nrows(), config.folds)?;
    let chosen = choose_params(raw.view(), &folds, config.params, progress)?;
    let fp_rate = match chosen.fp_rate {
        Some(fp) => fp,
        None => cv_fp_rate(raw.view(), &folds, chosen.nu, chosen.gamma)?,
    };
    let summary = TrainingSummary {
        windows: raw.nrows(),
        files: config.files.clone(),
        cv_false_positive_rate: Some(fp_rate),
        folds: config.folds,
        grid: chosen.grid.map_or("fixed", Grid::name).to_string(),
        qemu_builds,
        estimated,
        tracked,
    };
    let mut model = Model::fit(features, raw.view(), chosen.nu, chosen.gamma, summary)?;
    model.smoothing = config.smoothing;
    Ok(Trained {
        model,
        chosen,
        fp_rate,
    })
}
