//! Evaluation by boot (`vmwatch eval --boot FILE…`), for phased recordings
//! (docs/LAB.md): each watched QEMU process of the files is one boot, whose
//! windows are labelled per window: normal (`--normal-label`, default
//! `web`), an anomaly (its scenario's name), or `switch` (between phases,
//! not scored). Each boot is held out once: a model is chosen (features,
//! then nu and gamma by an inner cross-validation) and fitted on the normal
//! windows of every other boot, then scores every window of the held-out
//! boot, in time order, smoothed as a monitor smooths. So false positives
//! are counted on boots no model they are scored by has seen, and an
//! anomaly's windows are scored against normal windows of its own boot.
//!
//! Optionally also the learning curve by boot (each held-out boot scored by
//! models of only K other boots) and the re-learning experiment on boots of
//! a second normal (e.g. `web-peak`), each such boot scored by the model of
//! every normal window, then by one that also learned the other such boots.

use std::collections::BTreeMap;

use ndarray::{Array2, Axis};

use super::{
    flagged_each, Columns, Confusion, EvalConfig, Fold, FoldChoice, RelearnReport, Report,
    ScenarioReport,
};
use crate::dataset::Table;
use crate::error::{Error, Result};
use crate::model::Smoothing;
use crate::train::{FeatureChoice, Folds};

/// Label of the windows between phases, which are not scored.
pub const SWITCH_LABEL: &str = "switch";

/// What a window is to the evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Normal,
    Anomaly(String),
    Skip,
}

impl Role {
    /// The window's letter in [`BootResult::verdicts`]: lower case when the
    /// model passed it, upper case when it flagged it.
    fn letter(&self, flagged: bool) -> char {
        let c = match self {
            Role::Normal => 'n',
            Role::Anomaly(_) => 'a',
            Role::Skip => 's',
        };
        if flagged {
            c.to_ascii_uppercase()
        } else {
            c
        }
    }
}

/// One boot: its windows in time order.
struct Boot {
    name: String,
    rows: Vec<usize>,
    table: usize,
    roles: Vec<Role>,
}

/// One held-out boot's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BootResult {
    pub name: String,
    pub normal_windows: usize,
    pub false_positives: usize,
    /// Its anomaly (none for a boot of normal windows only), its windows
    /// and how many were flagged.
    pub anomaly: Option<String>,
    pub anomaly_windows: usize,
    pub detected: usize,
    pub skipped: usize,
    /// The model's raw verdict on each window, in time order, before
    /// smoothing: `n`/`N` a normal window passed/flagged, `a`/`A` an
    /// anomalous one, `s`/`S` a switch window (not scored). With it a
    /// report can be re-scored under another smoothing ([`BootResult::smoothed`]).
    #[serde(default)]
    pub verdicts: String,
}

impl BootResult {
    /// This boot's counts when its raw verdicts are smoothed with `smoothing`.
    pub fn smoothed(&self, smoothing: Smoothing) -> BootResult {
        let raw: Vec<bool> = self
            .verdicts
            .chars()
            .map(|c| c.is_ascii_uppercase())
            .collect();
        let flags = smoothing.apply(&raw);
        let mut r = BootResult {
            normal_windows: 0,
            false_positives: 0,
            anomaly_windows: 0,
            detected: 0,
            skipped: 0,
            ..self.clone()
        };
        for (c, f) in self.verdicts.chars().zip(flags) {
            match c.to_ascii_lowercase() {
                'n' => {
                    r.normal_windows += 1;
                    r.false_positives += usize::from(f);
                }
                'a' => {
                    r.anomaly_windows += 1;
                    r.detected += usize::from(f);
                }
                _ => r.skipped += 1,
            }
        }
        r
    }
}

/// What a set of held-out boots adds up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Per anomaly: its windows, and its own boots' normal windows.
    pub scenarios: Vec<ScenarioReport>,
    pub median_f_measure: f64,
    pub median_sensitivity: f64,
    /// False positives over every held-out normal window.
    pub fp_rate: f64,
    pub normal_windows: usize,
}

/// The per-scenario results and medians of `results` (already smoothed).
pub fn summarize(results: &[BootResult]) -> Summary {
    let mut per_scenario: BTreeMap<String, Confusion> = BTreeMap::new();
    let (mut fp, mut normal) = (0usize, 0usize);
    for r in results {
        fp += r.false_positives;
        normal += r.normal_windows;
        if let Some(a) = &r.anomaly {
            let c = per_scenario.entry(a.clone()).or_default();
            c.tp += r.detected as f64;
            c.fn_ += (r.anomaly_windows - r.detected) as f64;
            c.fp += r.false_positives as f64;
            c.tn += (r.normal_windows - r.false_positives) as f64;
        }
    }
    let scenarios: Vec<ScenarioReport> = per_scenario
        .into_iter()
        .map(|(name, c)| ScenarioReport::new(name, (c.tp + c.fn_) as usize, &c))
        .collect();
    let of =
        |f: fn(&ScenarioReport) -> f64| super::median(&scenarios.iter().map(f).collect::<Vec<_>>());
    Summary {
        median_f_measure: of(|s| s.f_measure),
        median_sensitivity: of(|s| s.sensitivity),
        fp_rate: fp as f64 / normal.max(1) as f64,
        normal_windows: normal,
        scenarios,
    }
}

/// One point of the learning curve by boot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    /// Boots each model learned from.
    pub boots: usize,
    /// Their normal windows, averaged over the held-out boots.
    pub training_windows: usize,
    pub median_f_measure: f64,
    pub median_sensitivity: f64,
    pub fp_rate: f64,
}

/// What `run` does besides holding out each boot.
#[derive(Default)]
pub struct Extras<'a> {
    /// Learning curve: numbers of training boots (each below the boots'
    /// count); each held-out boot is scored by a model of the K boots that
    /// follow it (cyclically, in input order).
    pub curve: Vec<usize>,
    /// Boots of a second normal (every window normal but switches), at
    /// least 2, for the re-learning experiment.
    pub relearn: &'a [(String, Table)],
}

/// The boots of `tables` (one per QEMU process of each file), with each
/// window's role; with `normal_labels` empty every window but switches is
/// normal.
fn boots(tables: &[(String, Table)], normal_labels: &[String]) -> Vec<Boot> {
    let mut out = Vec::new();
    for (t, (name, table)) in tables.iter().enumerate() {
        let mut by_pid: BTreeMap<(u32, String), Vec<usize>> = BTreeMap::new();
        for (i, k) in table.keys.iter().enumerate() {
            by_pid.entry((k.pid, k.vm.clone())).or_default().push(i);
        }
        let several = by_pid.len() > 1;
        for ((pid, vm), mut rows) in by_pid {
            rows.sort_by_key(|&i| (table.keys[i].window, table.keys[i].start_unix_ms));
            let roles = rows
                .iter()
                .map(|&i| {
                    let l = &table.keys[i].label;
                    if l == SWITCH_LABEL {
                        Role::Skip
                    } else if normal_labels.is_empty() || normal_labels.contains(l) {
                        Role::Normal
                    } else {
                        Role::Anomaly(l.clone())
                    }
                })
                .collect();
            out.push(Boot {
                name: if several {
                    format!("{name} (VM {vm}, PID {pid})")
                } else {
                    name.clone()
                },
                rows,
                table: t,
                roles,
            });
        }
    }
    out
}

/// The normal windows of `boots` as tables (for choosing candidate features).
fn normal_tables(tables: &[(String, Table)], boots: &[Boot]) -> Vec<Table> {
    tables
        .iter()
        .enumerate()
        .map(|(t, (_, table))| {
            let keep: Vec<usize> = boots
                .iter()
                .filter(|b| b.table == t)
                .flat_map(|b| {
                    b.rows
                        .iter()
                        .zip(&b.roles)
                        .filter(|(_, r)| **r == Role::Normal)
                        .map(|(&i, _)| i)
                })
                .collect();
            Table {
                features: table.features.clone(),
                keys: keep.iter().map(|&i| table.keys[i].clone()).collect(),
                x: table.x.select(Axis(0), &keep),
            }
        })
        .collect()
}

/// The boots' windows in the chosen features: each boot's every window,
/// and its normal ones.
struct Projected {
    all: Vec<Array2<f64>>,
    normal: Vec<Array2<f64>>,
}

impl Projected {
    fn new(tables: &[(String, Table)], boots: &[Boot], features: &[String]) -> Self {
        let projected: Vec<Array2<f64>> = tables.iter().map(|(_, t)| t.project(features)).collect();
        let all: Vec<Array2<f64>> = boots
            .iter()
            .map(|b| projected[b.table].select(Axis(0), &b.rows))
            .collect();
        let normal = boots
            .iter()
            .zip(&all)
            .map(|(b, x)| {
                let keep: Vec<usize> = (0..b.rows.len())
                    .filter(|&i| b.roles[i] == Role::Normal)
                    .collect();
                x.select(Axis(0), &keep)
            })
            .collect();
        Self { all, normal }
    }

    /// The normal windows of the boots `which` picks, stacked.
    fn stack(&self, which: impl Fn(usize) -> bool) -> Result<Stacked> {
        let parts: Vec<_> = self
            .normal
            .iter()
            .enumerate()
            .filter(|(i, _)| which(*i))
            .map(|(_, x)| x.view())
            .collect();
        if parts.is_empty() {
            return Err(Error::Invalid("no training boot left".into()));
        }
        Ok(Stacked {
            x: ndarray::concatenate(Axis(0), &parts)
                .map_err(|e| Error::Invalid(format!("stacking the boots' windows: {e}")))?,
            sizes: parts.iter().map(|p| p.nrows()).collect(),
        })
    }
}

/// Training windows of several boots, one boot after another.
struct Stacked {
    x: Array2<f64>,
    /// Each boot's windows, in order (the inner cross-validation's groups).
    sizes: Vec<usize>,
}

impl Stacked {
    /// These boots' windows, then `other`'s.
    fn and(self, other: Stacked) -> Result<Stacked> {
        Ok(Stacked {
            x: ndarray::concatenate(Axis(0), &[self.x.view(), other.x.view()])
                .map_err(|e| Error::Invalid(format!("stacking the boots' windows: {e}")))?,
            sizes: self.sizes.into_iter().chain(other.sizes).collect(),
        })
    }
}

/// `boot`'s raw verdicts by `fold`'s model, tallied unsmoothed.
fn score(boot: &Boot, x: &Array2<f64>, fold: &Fold) -> Result<BootResult> {
    let flags = flagged_each(fold, x.view(), Smoothing::default());
    let mut anomaly: Option<String> = None;
    for role in &boot.roles {
        if let Role::Anomaly(name) = role {
            match &anomaly {
                Some(a) if a != name => {
                    return Err(Error::Invalid(format!(
                        "{} has windows of two anomalies ({a} and {name}): one per boot",
                        boot.name
                    )))
                }
                _ => anomaly = Some(name.clone()),
            }
        }
    }
    let verdicts: String = boot
        .roles
        .iter()
        .zip(&flags)
        .map(|(role, &f)| role.letter(f))
        .collect();
    Ok(BootResult {
        name: boot.name.clone(),
        normal_windows: 0,
        false_positives: 0,
        anomaly,
        anomaly_windows: 0,
        detected: 0,
        skipped: 0,
        verdicts,
    }
    .smoothed(Smoothing::default()))
}

/// The evaluation by boot of `tables`, nested: see the module's comment.
/// `progress` hears each held-out boot.
pub fn run(
    tables: &[(String, Table)],
    normal_labels: &[String],
    config: &EvalConfig,
    extras: &Extras,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    let boots = boots(tables, normal_labels);
    if boots.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} boot(s) given: evaluating by boot holds each out, so it needs at least 2",
            boots.len()
        )));
    }
    if let Some(&k) = extras.curve.iter().find(|&&k| k == 0 || k >= boots.len()) {
        return Err(Error::Invalid(format!(
            "a learning curve over {k} training boot(s) needs 1 to {} (one fewer than the {} boots)",
            boots.len() - 1,
            boots.len()
        )));
    }
    // Candidate features from normal windows only; each model narrows
    // them to its training windows' nonzero columns.
    let normal_only = normal_tables(tables, &boots);
    let refs: Vec<&Table> = normal_only.iter().collect();
    let features = config.features.resolve(&refs)?;
    let columns = match &config.features {
        FeatureChoice::List(_) => Columns::All,
        FeatureChoice::Nonzero(_) => Columns::Nonzero,
    };
    let data = Projected::new(tables, &boots, &features);
    let folds = config.folds;
    // The inner cross-validation holds out whole boots, as the outer
    // evaluation does, so (nu, gamma) are chosen for boots not learned.
    let train = |s: Stacked, what: &str| -> Result<Fold> {
        if s.x.nrows() < folds * 2 {
            return Err(Error::Invalid(format!(
                "{what}: {} normal windows are too few for {folds} folds",
                s.x.nrows()
            )));
        }
        let inner = Folds::by_group(&s.sizes, folds)?;
        Fold::train(s.x.view(), 0..0, columns, &inner, config.params, &|| {})
    };
    let mut raw = Vec::new();
    let mut choices = Vec::new();
    for (b, boot) in boots.iter().enumerate() {
        progress(&format!(
            "boot {}/{} held out: {}…",
            b + 1,
            boots.len(),
            boot.name
        ));
        let fold = train(data.stack(|i| i != b)?, &format!("without {}", boot.name))?;
        choices.push(fold.choice());
        // Scored as a monitor sees them: every window in time order,
        // switches included, smoothed over the boot.
        raw.push(score(boot, &data.all[b], &fold)?);
    }
    let results: Vec<BootResult> = raw.iter().map(|r| r.smoothed(config.smoothing)).collect();
    let summary = summarize(&results);
    if summary.scenarios.is_empty() {
        return Err(Error::Invalid(
            "no window of the boots is labelled as an anomaly: nothing to detect".into(),
        ));
    }
    let mut curve = Vec::new();
    for &k in &extras.curve {
        let mut points = Vec::new();
        let mut windows = 0;
        for (b, boot) in boots.iter().enumerate() {
            progress(&format!(
                "learning curve, {k} training boot(s): boot {}/{} held out…",
                b + 1,
                boots.len()
            ));
            let chosen: Vec<usize> = (1..=k).map(|d| (b + d) % boots.len()).collect();
            let x = data.stack(|i| chosen.contains(&i))?;
            windows += x.x.nrows();
            let fold = train(x, &format!("{k} boot(s) without {}", boot.name))?;
            points.push(score(boot, &data.all[b], &fold)?.smoothed(config.smoothing));
        }
        let s = summarize(&points);
        curve.push(CurvePoint {
            boots: k,
            training_windows: windows / boots.len(),
            median_f_measure: s.median_f_measure,
            median_sensitivity: s.median_sensitivity,
            fp_rate: s.fp_rate,
        });
    }
    progress("all normal windows…");
    let all = train(data.stack(|_| true)?, "all boots")?;
    let relearn = if extras.relearn.is_empty() {
        None
    } else {
        Some(relearn_boots(
            extras.relearn,
            &features,
            &data,
            &all,
            config.smoothing,
            &train,
            progress,
        )?)
    };
    Ok(Report {
        normal: format!(
            "{} boots (labels {})",
            boots.len(),
            normal_labels.join(", ")
        ),
        normal_windows: summary.normal_windows,
        features: all.columns.len(),
        nu: all.chosen.nu,
        gamma: all.chosen.gamma,
        parameters: all.chosen.describe(),
        folds,
        fold_choices: choices,
        smoothing: config.smoothing.to_string(),
        median_f_measure: summary.median_f_measure,
        median_sensitivity: summary.median_sensitivity,
        median_fp_rate: summary.fp_rate,
        scenarios: summary.scenarios,
        learning_curve: Vec::new(),
        relearn,
        boots: results,
        boot_curve: curve,
    })
}

/// The re-learning experiment on boots of a second normal: each is scored
/// by `all` (the model of every normal window of the evaluated boots), then
/// by a model that also learned the other second-normal boots.
fn relearn_boots(
    peak: &[(String, Table)],
    features: &[String],
    data: &Projected,
    all: &Fold,
    smoothing: Smoothing,
    train: &dyn Fn(Stacked, &str) -> Result<Fold>,
    progress: &mut dyn FnMut(&str),
) -> Result<RelearnReport> {
    let peak_boots = boots(peak, &[]);
    if peak_boots.len() < 2 {
        return Err(Error::Invalid(format!(
            "re-learning by boot holds out each boot of the new normal, so it needs at least 2 \
             ({} given)",
            peak_boots.len()
        )));
    }
    let peak_data = Projected::new(peak, &peak_boots, features);
    let (mut before, mut after, mut windows) = (0usize, 0usize, 0usize);
    for (p, boot) in peak_boots.iter().enumerate() {
        progress(&format!(
            "re-learning: boot {}/{} of the new normal held out…",
            p + 1,
            peak_boots.len()
        ));
        let x = &peak_data.all[p];
        let old = score(boot, x, all)?.smoothed(smoothing);
        let both = data.stack(|_| true)?.and(peak_data.stack(|i| i != p)?)?;
        let fold = train(both, &format!("re-learning without {}", boot.name))?;
        let new = score(boot, x, &fold)?.smoothed(smoothing);
        before += old.false_positives;
        after += new.false_positives;
        windows += old.normal_windows;
    }
    Ok(RelearnReport {
        file: peak_boots
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        fp_rate_before: before as f64 / windows.max(1) as f64,
        fp_rate_after: after as f64 / windows.max(1) as f64,
    })
}

/// The per-boot table of a boot-wise report (markdown).
pub fn markdown(results: &[BootResult], choices: &[FoldChoice]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| held-out boot | anomaly | normal windows | false positives | anomalous windows | \
         detected | switch windows | features | nu | gamma |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (r, c) in results.iter().zip(choices) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.anomaly.as_deref().unwrap_or("—"),
            r.normal_windows,
            r.false_positives,
            r.anomaly_windows,
            r.detected,
            r.skipped,
            c.features,
            c.nu,
            c.gamma
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::RowKey;
    use crate::features::FeatureList;
    use crate::model::Smoothing;
    use crate::train::SvmParams;

    /// A boot of `n` windows around `level`; windows `from..to` (if any)
    /// are labelled `anomaly` and shifted far up; the one before them is a
    /// switch.
    fn boot(pid: u32, n: usize, level: f64, attack: Option<(&str, usize, usize)>) -> Table {
        let features = vec!["qemu:a".to_string(), "qemu:b".to_string()];
        let mut keys = Vec::new();
        let mut x = Vec::new();
        for i in 0..n {
            let mut label = "web".to_string();
            let mut shift = 0.0;
            if let Some((name, from, to)) = attack {
                if i + 1 == from {
                    label = SWITCH_LABEL.into();
                } else if (from..to).contains(&i) {
                    label = name.into();
                    shift = 5000.0;
                }
            }
            keys.push(RowKey {
                vm: format!("vm{pid}"),
                pid,
                label,
                window: i as u64,
                start_unix_ms: 2000 * i as u64,
                duration_ms: 2000,
                qemu: None,
                sampled: Vec::new(),
            });
            let j = i as f64;
            x.extend([
                level + (j * 37.0) % 23.0 + shift,
                level * 3.0 + (j * 53.0) % 31.0,
            ]);
        }
        Table {
            features,
            keys,
            x: Array2::from_shape_vec((n, 2), x).unwrap(),
        }
    }

    fn config() -> EvalConfig {
        EvalConfig {
            features: FeatureChoice::List(FeatureList::new(vec!["qemu:a".into(), "qemu:b".into()])),
            params: SvmParams::Fixed {
                nu: 0.05,
                gamma: 0.5,
            },
            folds: 3,
            smoothing: Smoothing::default(),
        }
    }

    /// A boot with a flood, one with a scan, and a normal one.
    fn three_boots() -> Vec<(String, Table)> {
        vec![
            (
                "a.csv".to_string(),
                boot(1, 60, 1000.0, Some(("flood", 30, 45))),
            ),
            (
                "b.csv".to_string(),
                boot(2, 60, 1000.0, Some(("scan", 20, 30))),
            ),
            ("c.csv".to_string(), boot(3, 60, 1000.0, None)),
        ]
    }

    #[test]
    fn each_boot_is_scored_by_a_model_of_the_others() {
        let mut tables = three_boots();
        // Normal, but unlike every other boot: only a model that saw it
        // would call it normal.
        tables.push(("odd.csv".to_string(), boot(4, 40, 4000.0, None)));
        let report = run(
            &tables,
            &["web".to_string()],
            &config(),
            &Extras::default(),
            &mut |_| {},
        )
        .unwrap();
        let results = &report.boots;
        assert_eq!(results.len(), 4);
        assert_eq!(report.fold_choices.len(), 4);
        let a = &results[0];
        assert_eq!(
            (
                a.anomaly.as_deref(),
                a.anomaly_windows,
                a.skipped,
                a.normal_windows
            ),
            (Some("flood"), 15, 1, 44)
        );
        assert!(a.detected >= 14, "{a:?}");
        let odd = &results[3];
        assert!(
            odd.false_positives >= 38,
            "a boot unlike the training boots passed as normal: {odd:?}"
        );
        // Each scenario's normal windows are its own boot's.
        let flood = report.scenarios.iter().find(|s| s.name == "flood").unwrap();
        assert_eq!(flood.tp + flood.fn_, 15.0);
        assert_eq!(flood.fp + flood.tn, 44.0);
        assert_eq!(report.normal_windows, 44 + 49 + 60 + 40);
        assert!(report.median_fp_rate > 0.15, "{}", report.median_fp_rate);
        assert!(report.markdown().contains("| odd.csv | — | 40 |"));
    }

    #[test]
    fn the_grid_search_holds_out_whole_boots() {
        let mut tables = three_boots();
        tables.push(("odd.csv".to_string(), boot(4, 40, 4000.0, None)));
        let params = SvmParams::Search(crate::train::Grid::Paper);
        let config = EvalConfig { params, ..config() };
        let report = run(
            &tables,
            &["web".to_string()],
            &config,
            &Extras::default(),
            &mut |_| {},
        )
        .unwrap();
        // Each held-out boot's parameters are those of a search whose
        // inner folds are whole other boots (not stretches of rows).
        let labels = ["web".to_string()];
        let all = boots(&tables, &labels);
        let features = ["qemu:a".to_string(), "qemu:b".to_string()];
        let data = Projected::new(&tables, &all, &features);
        for (b, choice) in report.fold_choices.iter().enumerate() {
            let s = data.stack(|i| i != b).unwrap();
            let inner = Folds::by_group(&s.sizes, 3).unwrap();
            assert_ne!(inner, Folds::contiguous(s.x.nrows(), 3).unwrap());
            let alone = crate::train::choose_params(s.x.view(), &inner, params, &|| {}).unwrap();
            assert_eq!(
                (choice.nu, choice.gamma, choice.cv_fp_rate),
                (alone.nu, alone.gamma, alone.fp_rate),
                "boot {b}"
            );
        }
    }

    #[test]
    fn needs_two_boots_and_an_anomaly() {
        let one = vec![(
            "a.csv".to_string(),
            boot(1, 60, 1000.0, Some(("x", 30, 40))),
        )];
        let e = run(
            &one,
            &["web".to_string()],
            &config(),
            &Extras::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
        let calm = vec![
            ("a.csv".to_string(), boot(1, 60, 1000.0, None)),
            ("b.csv".to_string(), boot(2, 60, 1000.0, None)),
        ];
        let e = run(
            &calm,
            &["web".to_string()],
            &config(),
            &Extras::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("nothing to detect"), "{e}");
    }

    #[test]
    fn raw_verdicts_are_rescored_under_another_smoothing() {
        let r = BootResult {
            name: "b".into(),
            normal_windows: 0,
            false_positives: 0,
            anomaly: Some("x".into()),
            anomaly_windows: 0,
            detected: 0,
            skipped: 0,
            verdicts: "nNnnsAAaA".into(),
        };
        let raw = r.smoothed(Smoothing::default());
        assert_eq!(
            (
                raw.normal_windows,
                raw.false_positives,
                raw.anomaly_windows,
                raw.detected,
                raw.skipped
            ),
            (4, 1, 4, 3, 1)
        );
        // 2 of the last 3: the lone false positive goes, and the missed
        // anomalous window is covered by its neighbours; the first
        // anomalous window is not yet flagged.
        let two = r.smoothed(Smoothing { k: 2, n: 3 });
        assert_eq!((two.false_positives, two.detected), (0, 3));
    }

    #[test]
    fn learning_curve_and_relearning_by_boot() {
        let tables = three_boots();
        // A second normal well above the first: every boot but switches
        // is normal whatever its label.
        let relabel = |mut t: Table| {
            for k in &mut t.keys {
                k.label = "web-peak".into();
            }
            t
        };
        let peak = vec![
            ("p1.csv".to_string(), relabel(boot(5, 40, 2500.0, None))),
            ("p2.csv".to_string(), relabel(boot(6, 40, 2500.0, None))),
        ];
        let extras = Extras {
            curve: vec![1, 2],
            relearn: &peak,
        };
        let report = run(
            &tables,
            &["web".to_string()],
            &config(),
            &extras,
            &mut |_| {},
        )
        .unwrap();
        let curve = &report.boot_curve;
        assert_eq!(curve.iter().map(|p| p.boots).collect::<Vec<_>>(), [1, 2]);
        // Normal windows: a 44, b 49, c 60; each boot learns from the K after it.
        assert_eq!(curve[0].training_windows, (49 + 60 + 44) / 3);
        assert_eq!(curve[1].training_windows, (109 + 104 + 93) / 3);
        let rl = report.relearn.as_ref().unwrap();
        assert!(rl.fp_rate_before > 0.9, "{rl:?}");
        assert!(rl.fp_rate_after < 0.5 * rl.fp_rate_before, "{rl:?}");
        assert!(
            report.markdown().contains("| 2 | 102 |"),
            "{}",
            report.markdown()
        );

        let e = run(
            &tables,
            &["web".to_string()],
            &config(),
            &Extras {
                curve: vec![3],
                relearn: &[],
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs 1 to 2"), "{e}");
        let e = run(
            &tables,
            &["web".to_string()],
            &config(),
            &Extras {
                curve: Vec::new(),
                relearn: &peak[..1],
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
    }
}
