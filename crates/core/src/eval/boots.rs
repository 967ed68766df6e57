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

use std::collections::BTreeMap;

use ndarray::{Array2, Axis};

use super::{
    flagged_each, Columns, Confusion, EvalConfig, Fold, FoldChoice, Report, ScenarioReport,
};
use crate::dataset::Table;
use crate::error::{Error, Result};
use crate::train::FeatureChoice;

/// Label of the windows between phases, which are not scored.
pub const SWITCH_LABEL: &str = "switch";

/// What a window is to the evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Normal,
    Anomaly(String),
    Skip,
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
}

/// The boots of `tables` (one per QEMU process of each file), with each
/// window's role.
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
                    if normal_labels.contains(l) {
                        Role::Normal
                    } else if l == SWITCH_LABEL {
                        Role::Skip
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

/// The evaluation by boot of `tables`, nested: see the module's comment.
/// `progress` hears each held-out boot.
pub fn run(
    tables: &[(String, Table)],
    normal_labels: &[String],
    config: &EvalConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    let boots = boots(tables, normal_labels);
    if boots.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} boot(s) given: evaluating by boot holds each out, so it needs at least 2",
            boots.len()
        )));
    }
    // Candidate features from normal windows only; each held-out boot's
    // model narrows them to its training windows' nonzero columns.
    let normal_only: Vec<Table> = tables
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
        .collect();
    let refs: Vec<&Table> = normal_only.iter().collect();
    let features = config.features.resolve(&refs)?;
    let columns = match &config.features {
        FeatureChoice::List(_) => Columns::All,
        FeatureChoice::Nonzero(_) => Columns::Nonzero,
    };
    let projected: Vec<Array2<f64>> = tables.iter().map(|(_, t)| t.project(&features)).collect();
    let x_of = |b: &Boot| projected[b.table].select(Axis(0), &b.rows);
    let normal_of = |b: &Boot| {
        let keep: Vec<usize> = (0..b.rows.len())
            .filter(|&i| b.roles[i] == Role::Normal)
            .collect();
        x_of(b).select(Axis(0), &keep)
    };
    let normals: Vec<Array2<f64>> = boots.iter().map(normal_of).collect();
    let stack = |skip: Option<usize>| -> Result<Array2<f64>> {
        let parts: Vec<_> = normals
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, x)| x.view())
            .collect();
        ndarray::concatenate(Axis(0), &parts)
            .map_err(|e| Error::Invalid(format!("stacking the boots' windows: {e}")))
    };
    let folds = config.folds;
    let mut results = Vec::new();
    let mut choices = Vec::new();
    let mut per_scenario: BTreeMap<String, Confusion> = BTreeMap::new();
    let mut all_normal = (0usize, 0usize);
    for (b, boot) in boots.iter().enumerate() {
        progress(&format!(
            "boot {}/{} held out: {}…",
            b + 1,
            boots.len(),
            boot.name
        ));
        let train = stack(Some(b))?;
        if train.nrows() < folds * 2 {
            return Err(Error::Invalid(format!(
                "without {}, {} normal windows are too few for {folds} folds",
                boot.name,
                train.nrows()
            )));
        }
        let fold = Fold::train(train.view(), 0..0, columns, folds, config.params, &|| {})?;
        choices.push(fold.choice());
        // Scored as a monitor sees them: every window in time order,
        // switches included, smoothed over the boot.
        let flags = flagged_each(&fold, x_of(boot).view(), config.smoothing);
        let mut r = BootResult {
            name: boot.name.clone(),
            normal_windows: 0,
            false_positives: 0,
            anomaly: None,
            anomaly_windows: 0,
            detected: 0,
            skipped: 0,
        };
        for (role, &f) in boot.roles.iter().zip(&flags) {
            match role {
                Role::Normal => {
                    r.normal_windows += 1;
                    r.false_positives += usize::from(f);
                }
                Role::Anomaly(name) => {
                    if r.anomaly.as_deref().is_some_and(|a| a != name) {
                        return Err(Error::Invalid(format!(
                            "{} has windows of two anomalies ({} and {name}): one per boot",
                            boot.name,
                            r.anomaly.as_deref().unwrap_or_default()
                        )));
                    }
                    r.anomaly = Some(name.clone());
                    r.anomaly_windows += 1;
                    r.detected += usize::from(f);
                }
                Role::Skip => r.skipped += 1,
            }
        }
        all_normal.0 += r.false_positives;
        all_normal.1 += r.normal_windows;
        if let Some(a) = &r.anomaly {
            let c = per_scenario.entry(a.clone()).or_default();
            c.tp += r.detected as f64;
            c.fn_ += (r.anomaly_windows - r.detected) as f64;
            c.fp += r.false_positives as f64;
            c.tn += (r.normal_windows - r.false_positives) as f64;
        }
        results.push(r);
    }
    if per_scenario.is_empty() {
        return Err(Error::Invalid(
            "no window of the boots is labelled as an anomaly: nothing to detect".into(),
        ));
    }
    progress("all normal windows…");
    let all = Fold::train(
        stack(None)?.view(),
        0..0,
        columns,
        folds,
        config.params,
        &|| {},
    )?;
    let scenarios: Vec<ScenarioReport> = per_scenario
        .into_iter()
        .map(|(name, c)| ScenarioReport::new(name, (c.tp + c.fn_) as usize, &c))
        .collect();
    let of =
        |f: fn(&ScenarioReport) -> f64| super::median(&scenarios.iter().map(f).collect::<Vec<_>>());
    let fp_rate = all_normal.0 as f64 / all_normal.1.max(1) as f64;
    let report = Report {
        normal: format!(
            "{} boots (labels {})",
            boots.len(),
            normal_labels.join(", ")
        ),
        normal_windows: all_normal.1,
        features: all.columns.len(),
        nu: all.chosen.nu,
        gamma: all.chosen.gamma,
        parameters: all.chosen.describe(),
        folds,
        fold_choices: choices,
        smoothing: config.smoothing.to_string(),
        median_f_measure: of(|s| s.f_measure),
        median_sensitivity: of(|s| s.sensitivity),
        median_fp_rate: fp_rate,
        scenarios,
        learning_curve: Vec::new(),
        relearn: None,
        boots: results,
    };
    Ok(report)
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
            features: FeatureChoice::List(vec!["qemu:a".into(), "qemu:b".into()]),
            params: SvmParams::Fixed {
                nu: 0.05,
                gamma: 0.5,
            },
            folds: 3,
            smoothing: Smoothing::default(),
        }
    }

    #[test]
    fn each_boot_is_scored_by_a_model_of_the_others() {
        let tables = vec![
            (
                "a.csv".to_string(),
                boot(1, 60, 1000.0, Some(("flood", 30, 45))),
            ),
            (
                "b.csv".to_string(),
                boot(2, 60, 1000.0, Some(("scan", 20, 30))),
            ),
            ("c.csv".to_string(), boot(3, 60, 1000.0, None)),
            // Normal, but unlike every other boot: only a model that saw
            // it would call it normal.
            ("odd.csv".to_string(), boot(4, 40, 4000.0, None)),
        ];
        let report = run(&tables, &["web".to_string()], &config(), &mut |_| {}).unwrap();
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
    fn needs_two_boots_and_an_anomaly() {
        let one = vec![(
            "a.csv".to_string(),
            boot(1, 60, 1000.0, Some(("x", 30, 40))),
        )];
        let e = run(&one, &["web".to_string()], &config(), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("at least 2"), "{e}");
        let calm = vec![
            ("a.csv".to_string(), boot(1, 60, 1000.0, None)),
            ("b.csv".to_string(), boot(2, 60, 1000.0, None)),
        ];
        let e = run(&calm, &["web".to_string()], &config(), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("nothing to detect"), "{e}");
    }
}
