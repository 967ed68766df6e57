//! `cargo xtask eval`: regenerates docs/RESULTS.md from the lab's data/.
//!
//! It runs the release vmwatch the way a user would: `vmwatch select` on
//! idle vs the stress scenarios (the paper's Table 1 and the selected probe
//! set), then `vmwatch eval` on `web` (normal) against the eight attack
//! scenarios once per feature set (all QEMU probes, selected probes, BPF
//! syscalls, all sources), with the learning curve, the re-learning
//! experiment (`web-peak`) and the figures. Every number in the report comes
//! from those runs; the text between the NOTES markers is kept across runs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use vmwatch_core::eval::{Report, ScenarioReport};
use vmwatch_core::features::read_feature_list;

use crate::lab::record::vmwatch_binary;
use crate::lab::scenario::{self, Group};
use crate::util::{self, note};

const BASELINE: &str = "idle";
const NORMAL: &str = "web";
const PEAK: &str = "web-peak";

/// The smoothing reported beside raw verdicts (K of the last N windows).
const SMOOTH: &str = "2/3";
/// Parameter grids: the paper's (nu, gamma in 0.01..0.1) and vmwatch's
/// wider log grid.
const GRIDS: [&str; 2] = ["paper", "wide"];
/// Guest CPU budget (percent of one CPU) of the budgeted selection.
const BUDGET: &str = "0.5";

const NOTES_BEGIN: &str = "<!-- NOTES BEGIN (kept by cargo xtask eval) -->";
const NOTES_END: &str = "<!-- NOTES END -->";

/// One feature set compared in the report.
struct FeatureSet {
    /// Directory name under docs/results/.
    key: &'static str,
    title: &'static str,
    /// The paper's median F-measure for the same kind of features.
    paper: &'static str,
    /// `vmwatch eval` arguments choosing the features.
    args: Vec<String>,
}

/// Options of `cargo xtask eval`.
pub struct Options {
    pub data: PathBuf,
    pub output: PathBuf,
    pub folds: usize,
    pub vmwatch: Option<PathBuf>,
}

pub fn run(o: &Options) -> Result<()> {
    let started = Instant::now();
    let root = util::repo_root();
    let data = root.join(&o.data);
    let file = |name: &str| data.join(format!("{name}.csv.gz"));
    let stress = scenario::in_group(Group::Stress);
    let attacks = scenario::in_group(Group::Attack);
    // Every scenario but the baseline, in the lab's order.
    let others: Vec<&str> = scenario::names()
        .into_iter()
        .filter(|n| *n != BASELINE)
        .collect();
    let mut missing = Vec::new();
    for name in scenario::names() {
        if !file(name).is_file() {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} lacks {} (run `cargo xtask lab record-all` to record the lab's data)",
            data.display(),
            missing
                .iter()
                .map(|m| format!("{m}.csv.gz"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let output = root.join(&o.output);
    let results = output
        .parent()
        .context("the output file has no directory")?
        .join("results");
    fs::create_dir_all(&results)
        .with_context(|| format!("could not create {}", results.display()))?;
    let vmwatch = vmwatch_binary(o.vmwatch.as_deref())?;
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };

    // `vmwatch select --source qemu` on BASELINE vs the stress scenarios,
    // writing `out`: its report and the number of features chosen.
    let select = |extra: &[&str], out: &Path| -> Result<(String, usize)> {
        let mut cmd = Command::new(&vmwatch);
        cmd.current_dir(&root)
            .args(["select", "--source", "qemu"])
            .args(extra)
            .arg("--baseline")
            .arg(rel(&file(BASELINE)));
        for s in &stress {
            cmd.arg(rel(&file(s)));
        }
        cmd.arg("-o").arg(rel(out));
        let report = util::output(&mut cmd)
            .with_context(|| format!("vmwatch select {} failed", extra.join(" ")))?;
        let chosen = read_feature_list(out)?.len();
        Ok((report, chosen))
    };
    note(format!(
        "selecting probes: {BASELINE} vs {}",
        stress.join(", ")
    ));
    let selected = results.join("selected-probes.txt");
    let (table1, chosen) = select(&[], &selected)?;
    note(format!("selecting probes within {BUDGET}% of one CPU"));
    let budgeted = results.join("selected-budget.txt");
    let (budget_out, chosen_budget) = select(&["--budget", BUDGET], &budgeted)?;
    let budget_cost = budget_out
        .lines()
        .rfind(|l| l.starts_with("cost of the selection"))
        .unwrap_or_default()
        .to_string();

    note(format!("scoring every scenario against {BASELINE}"));
    let mut cmd = Command::new(&vmwatch);
    cmd.current_dir(&root)
        .args(["select", "--source", "qemu", "--top", "3", "--baseline"])
        .arg(rel(&file(BASELINE)));
    for s in &others {
        cmd.arg(rel(&file(s)));
    }
    let scratch = results.join(".every-scenario.txt");
    cmd.arg("-o").arg(rel(&scratch));
    let every = util::output(&mut cmd).context("vmwatch select (every scenario) failed")?;
    let _ = fs::remove_file(&scratch);
    // The first block of select's report: the best probe of each pair.
    let every: String = every
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();

    let sets = [
        FeatureSet {
            key: "all-probes",
            title: "all QEMU probes",
            paper: "73%",
            args: vec!["--source".into(), "qemu".into()],
        },
        FeatureSet {
            key: "selected-probes",
            title: "selected probes (LDA)",
            paper: "62%",
            args: vec!["--features".into(), rel(&selected).display().to_string()],
        },
        FeatureSet {
            key: "selected-budget",
            title: "selected probes within 0.5% CPU (LDA + budget)",
            paper: "62%",
            args: vec!["--features".into(), rel(&budgeted).display().to_string()],
        },
        FeatureSet {
            key: "syscalls",
            title: "system calls (BPF)",
            paper: "50% (strace)",
            args: vec!["--source".into(), "syscalls".into()],
        },
        FeatureSet {
            key: "all-sources",
            title: "QEMU probes + syscalls + KVM",
            paper: "—",
            args: vec!["--source".into(), "qemu,syscalls,kvm".into()],
        },
    ];
    let mut runs = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        note(format!(
            "[{}/{}] evaluating {} ({} so far)",
            i + 1,
            sets.len(),
            set.title,
            util::human_duration(started.elapsed())
        ));
        let mut variants = Vec::new();
        let mut markdown = Vec::new();
        for grid in GRIDS {
            let dir = results.join(set.key).join(grid);
            fs::create_dir_all(&dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
            let eval = |extra: &[String], json: &Path| -> Result<(String, Report)> {
                let mut cmd = Command::new(&vmwatch);
                cmd.current_dir(&root)
                    .arg("eval")
                    .arg("--normal")
                    .arg(rel(&file(NORMAL)));
                for a in &attacks {
                    cmd.arg("--anomaly").arg(rel(&file(a)));
                }
                cmd.args(&set.args)
                    .args(["--folds", &o.folds.to_string()])
                    .args(extra)
                    .arg("--json")
                    .arg(rel(json));
                let out = util::output(&mut cmd)
                    .with_context(|| format!("vmwatch eval ({}) failed", set.title))?;
                Ok((out, read_report(json)?))
            };
            note(format!("    {grid} grid"));
            let (md, raw) = eval(
                &[
                    "--grid".into(),
                    grid.to_string(),
                    "--relearn".into(),
                    rel(&file(PEAK)).display().to_string(),
                    "--plots".into(),
                    rel(&dir).display().to_string(),
                ],
                &dir.join("eval.json"),
            )?;
            note(format!("    {grid} grid, {SMOOTH} smoothing"));
            let (_, smoothed) = eval(
                &[
                    "--grid".into(),
                    grid.to_string(),
                    "--smooth".into(),
                    SMOOTH.into(),
                ],
                &dir.join("eval-smooth.json"),
            )?;
            markdown.push((grid, md, dir));
            variants.push(Variant {
                grid,
                smooth: "1/1",
                report: raw,
            });
            variants.push(Variant {
                grid,
                smooth: SMOOTH,
                report: smoothed,
            });
        }
        runs.push(Run {
            set,
            markdown,
            variants,
        });
    }

    let manifest = fs::read_to_string(data.join("MANIFEST.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let old = fs::read_to_string(&output).unwrap_or_default();
    let text = render(&Render {
        manifest: manifest.as_ref(),
        data: &rel(&data),
        table1: &table1,
        every: &every,
        chosen,
        selected: &rel(&selected),
        chosen_budget,
        budgeted: &rel(&budgeted),
        budget_cost: &budget_cost,
        runs: &runs,
        docs: output.parent().unwrap_or(&root),
        notes: kept_notes(&old),
        folds: o.folds,
    })?;
    util::write_atomic(&output, text.as_bytes())?;
    note(format!(
        "wrote {} in {}",
        rel(&output).display(),
        util::human_duration(started.elapsed())
    ));
    for r in &runs {
        let cells: Vec<String> = r
            .variants
            .iter()
            .map(|v| {
                format!(
                    "{} {}: F {:.1}% FP {:.2}%",
                    v.grid,
                    v.smooth,
                    100.0 * v.report.median_f_measure,
                    100.0 * v.report.median_fp_rate
                )
            })
            .collect();
        note(format!("{:<28} {}", r.set.title, cells.join(" | ")));
    }
    Ok(())
}

/// The results of one feature set.
struct Run<'a> {
    set: &'a FeatureSet,
    /// Per grid: `vmwatch eval`'s markdown report (raw verdicts) and the
    /// directory of its figures.
    markdown: Vec<(&'static str, String, PathBuf)>,
    /// Per grid, raw then smoothed.
    variants: Vec<Variant>,
}

/// One evaluation of a feature set.
struct Variant {
    grid: &'static str,
    smooth: &'static str,
    report: Report,
}

impl Run<'_> {
    fn get(&self, grid: &str, smooth: &str) -> Option<&Report> {
        self.variants
            .iter()
            .find(|v| v.grid == grid && v.smooth == smooth)
            .map(|v| &v.report)
    }

    /// The paper's procedure: paper grid, raw verdicts.
    fn paper(&self) -> &Report {
        &self.variants[0].report
    }
}

/// A report of `vmwatch eval --json`.
fn read_report(path: &Path) -> Result<Report> {
    let text =
        fs::read_to_string(path).with_context(|| format!("could not read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a report of `vmwatch eval --json`",
            path.display()
        )
    })
}

struct Render<'a> {
    manifest: Option<&'a Value>,
    data: &'a Path,
    table1: &'a str,
    /// The best probe of each scenario against idle.
    every: &'a str,
    chosen: usize,
    selected: &'a Path,
    /// The selection within the cost budget: size, file, select's cost line.
    chosen_budget: usize,
    budgeted: &'a Path,
    budget_cost: &'a str,
    runs: &'a [Run<'a>],
    docs: &'a Path,
    notes: String,
    folds: usize,
}

/// Three significant digits (grid points such as 10^-2.5).
/// `lo` or, when the folds chose differently, `lo-hi`.
fn span(lo: f64, hi: f64) -> String {
    if lo == hi {
        sig(lo)
    } else {
        format!("{}-{}", sig(lo), sig(hi))
    }
}

fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    let t = format!("{x:.digits$}");
    if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The notes section of an earlier report, or a placeholder.
fn kept_notes(old: &str) -> String {
    match (old.find(NOTES_BEGIN), old.find(NOTES_END)) {
        (Some(b), Some(e)) if b < e => old[b + NOTES_BEGIN.len()..e].trim().to_string(),
        _ => "(Hand-written discussion goes here; `cargo xtask eval` keeps it.)".to_string(),
    }
}

fn render(r: &Render) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "# Results\n")?;
    writeln!(
        s,
        "Generated by `cargo xtask eval` from `{}` on {}. Everything but the notes at the \
         end is rewritten on each run; the numbers come from `vmwatch select` and `vmwatch \
         eval` (release build) on the committed lab data.\n",
        r.data.display(),
        util::utc_now()
    )?;
    if let Some(m) = r.manifest {
        let get = |k: &str| m.get(k).map(value_text).unwrap_or_default();
        let qemu = m
            .get("qemu")
            .and_then(|q| q.get("qemu_version"))
            .map(value_text)
            .unwrap_or_default();
        let kernel = m
            .get("guest")
            .and_then(|g| g.get("kernel"))
            .and_then(|k| k.get("version"))
            .map(value_text)
            .unwrap_or_default();
        writeln!(
            s,
            "Data: recorded {} with {} ({}), {qemu}, guest kernel {kernel}, \
             accelerator {}, {} windows of {} per scenario, sources {}.\n",
            get("date"),
            get("vmwatch_version"),
            get("git"),
            get("accelerator"),
            get("windows_per_scenario"),
            get("interval"),
            get("sources")
        )?;
    }

    writeln!(s, "## Summary: feature sets side by side\n")?;
    writeln!(
        s,
        "Normal behaviour: `{NORMAL}` (a web server under a randomly varying client load). \
         Anomalies: the eight attack scenarios (`-source`: the VM attacks, `-target`: the VM \
         is attacked), each on top of the normal load. The paper's protocol: {} folds; per \
         fold a one-class SVM is trained on the other normal folds and tested on the held-out \
         normal fold plus the matching fold of the attack; counts are averaged over folds. \
         Nested: each outer fold chooses its features (those nonzero in its training windows, \
         or a list `vmwatch select` chose on other files) and its nu and gamma (an inner \
         {0}-fold cross-validation of false positives inside its training windows) without \
         seeing its held-out windows or any attack file, so the false positives reported were \
         not minimised. nu and gamma come from a grid: the paper's grid (0.01..0.1 for both) or vmwatch's wide log grid. Goal (DESIGN.md): median F-measure ≥ 95% with ≤ 1% false \
         positives.\n",
        r.folds
    )?;
    writeln!(
        s,
        "Each cell: median F-measure / false positives on held-out normal windows \
         (nu, gamma: the range the outer folds chose). **Bold**: meets the goal. Columns: the paper's grid and vmwatch's wide \
         log grid, each with raw verdicts and with {SMOOTH} smoothing.\n"
    )?;
    write!(s, "| feature set | features |")?;
    for grid in GRIDS {
        write!(s, " {grid} grid | {grid} grid, {SMOOTH} |")?;
    }
    writeln!(s, " paper's median F |")?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
    for run in r.runs {
        write!(s, "| {} | {} |", run.set.title, run.paper().features)?;
        for grid in GRIDS {
            for smooth in ["1/1", SMOOTH] {
                match run.get(grid, smooth) {
                    Some(v) => {
                        let (f, fp) = (v.median_f_measure, v.median_fp_rate);
                        let cell = format!("{} / {:.2}%", pct(f), 100.0 * fp);
                        if f >= 0.95 && fp <= 0.01 {
                            write!(s, " **{cell}**")?;
                        } else {
                            write!(s, " {cell}")?;
                        }
                        let ((nu_lo, nu_hi), (g_lo, g_hi)) = v.chosen_ranges();
                        write!(s, " ({}, {}) |", span(nu_lo, nu_hi), span(g_lo, g_hi))?;
                    }
                    None => write!(s, " — |")?,
                }
            }
        }
        writeln!(s, " {} |", run.set.paper)?;
    }
    writeln!(
        s,
        "\nFalse positives are the held-out normal windows flagged (the same folds for every \
         scenario). Smoothing K/N flags a window when K of the last N windows of its \
         held-out stretch are anomalous, as `vmwatch monitor --smooth` does live.\n"
    )?;

    writeln!(s, "### F-measure (sensitivity) per attack scenario\n")?;
    writeln!(
        s,
        "Each cell: the paper's procedure (paper grid, raw verdicts) → wide grid with {SMOOTH} \
         smoothing.\n"
    )?;
    write!(s, "| scenario |")?;
    for run in r.runs {
        write!(s, " {} |", run.set.title)?;
    }
    writeln!(s)?;
    write!(s, "|---|")?;
    for _ in r.runs {
        write!(s, "---:|")?;
    }
    writeln!(s)?;
    for attack in scenario::in_group(Group::Attack) {
        write!(s, "| {attack} |")?;
        for run in r.runs {
            let cell = |v: Option<&Report>| match v.and_then(|v| scenario(v, attack)) {
                Some(sc) => format!("{} ({})", pct(sc.f_measure), pct(sc.sensitivity)),
                None => "—".to_string(),
            };
            write!(
                s,
                " {} → {} |",
                cell(Some(run.paper())),
                cell(run.get("wide", SMOOTH))
            )?;
        }
        writeln!(s)?;
    }
    writeln!(s)?;
    writeln!(
        s,
        "Below 95% F-measure with the wide grid and {SMOOTH} smoothing:\n"
    )?;
    for run in r.runs {
        let Some(best) = run.get("wide", SMOOTH) else {
            continue;
        };
        let low: Vec<String> = best
            .scenarios
            .iter()
            .filter(|sc| sc.f_measure < 0.95)
            .map(|sc| {
                format!(
                    "{} (F {}, sensitivity {})",
                    sc.name,
                    pct(sc.f_measure),
                    pct(sc.sensitivity)
                )
            })
            .collect();
        writeln!(
            s,
            "- {}: {}",
            run.set.title,
            if low.is_empty() {
                "none".to_string()
            } else {
                low.join("; ")
            }
        )?;
    }
    writeln!(s)?;

    writeln!(
        s,
        "### Re-learning (paper section 5.2: 82% → 1% false positives)\n"
    )?;
    writeln!(
        s,
        "False positives on `{PEAK}` (sustained higher load) of a model trained on `{NORMAL}` \
         alone, then with the other folds of `{PEAK}` added to training (paper grid):\n"
    )?;
    writeln!(s, "| feature set | trained on web | after re-learning |")?;
    writeln!(s, "|---|---:|---:|")?;
    for run in r.runs {
        if let Some(rl) = &run.paper().relearn {
            writeln!(
                s,
                "| {} | {} | {} |",
                run.set.title,
                pct(rl.fp_rate_before),
                pct(rl.fp_rate_after)
            )?;
        }
    }
    writeln!(s)?;

    writeln!(
        s,
        "## Table 1: probe selection by LDA (`{BASELINE}` vs each stress scenario)\n"
    )?;
    writeln!(
        s,
        "`vmwatch select --source qemu`: per pair, every probe's LDA score (squared \
         canonical correlation, R subselect's ccr12) on ln(1+count), a greedy multivariate \
         subset, and the union of the subsets ({} probes, in `{}`), which is the \"selected\" \
         feature set above.\n",
        r.chosen,
        r.selected.display()
    )?;
    writeln!(s, "```text\n{}```\n", r.table1)?;
    writeln!(
        s,
        "The same with `--budget {BUDGET}` (the DESIGN's goal for the selected probes' guest \
         overhead): each greedy subset only adds a probe while the union's cost — every \
         probe's highest mean hits per second in the five files × 1 µs per hit — stays within \
         {BUDGET}% of one CPU. {} probes, in `{}`, the \"within 0.5% CPU\" feature set above:\n",
        r.chosen_budget,
        r.budgeted.display()
    )?;
    writeln!(s, "```text\n{}\n```\n", r.budget_cost)?;

    writeln!(s, "## What sets each scenario apart from `{BASELINE}`\n")?;
    writeln!(
        s,
        "The single QEMU probe with the highest LDA score (ccr12 on ln(1+count)) for every \
         scenario against `{BASELINE}`, from `vmwatch select --source qemu --top 3`:\n"
    )?;
    writeln!(s, "```text\n{}```\n", r.every)?;

    writeln!(s, "## Details per feature set\n")?;
    for run in r.runs {
        for (grid, markdown, dir) in &run.markdown {
            let rel_dir = dir.strip_prefix(r.docs).unwrap_or(dir);
            writeln!(s, "### {}, {grid} grid\n", run.set.title)?;
            writeln!(s, "{}\n", markdown.trim())?;
            writeln!(
                s,
                "![learning curve]({0}/learning-curve.svg) ![scenarios]({0}/scenarios.svg)\n",
                rel_dir.display()
            )?;
        }
    }

    writeln!(s, "## Notes\n\n{NOTES_BEGIN}\n{}\n{NOTES_END}", r.notes)?;
    Ok(s)
}

/// The result of one attack scenario in an eval report.
fn scenario<'r>(r: &'r Report, name: &str) -> Option<&'r ScenarioReport> {
    r.scenarios.iter().find(|sc| sc.name == name)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_survive_a_rewrite() {
        let old = format!("# Results\nold numbers\n## Notes\n\n{NOTES_BEGIN}\nwhy slowhttp is hard\n{NOTES_END}\n");
        assert_eq!(kept_notes(&old), "why slowhttp is hard");
        assert!(kept_notes("no markers").starts_with("(Hand-written"));
    }

    #[test]
    fn grid_points_print_short() {
        for (x, short) in [
            (0.0031622776601683794, "0.00316"),
            (0.04, "0.04"),
            (0.001, "0.001"),
            (31.622776, "31.6"),
        ] {
            assert_eq!(sig(x), short, "{x}");
        }
    }
}
