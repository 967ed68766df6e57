//! `vmwatch select`: LDA scores of each feature for baseline-vs-stress
//! pairs (the paper's Table 1) and a multivariate subset per pair.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use vmwatch::dataset::Table;
use vmwatch::select::{score_pair, Budget, PairScores, Transform};

/// Rank features by how well they separate a baseline scenario from each
/// stress scenario (Linear Discriminant Analysis, two classes at a time).
///
/// A feature's score is its squared canonical correlation with the class:
/// between-class over total sum of squares, the `ccr12` criterion of R's
/// subselect (the paper's "LDA score", 0 to 1). Prints the best feature of
/// each pair (the paper's Table 1), then per pair a greedy forward subset
/// of up to --top features chosen on the subset's multivariate ccr12, and
/// the --top best features alone. The union of the subsets is the selected
/// feature list, input of `record --probes` and `train --features`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset of the baseline (normal, e.g. idle) scenario.
    #[arg(long, value_name = "FILE")]
    baseline: PathBuf,
    /// Datasets of the scenarios to tell apart from the baseline, one pair
    /// each (`.csv` or `.csv.gz`).
    #[arg(value_name = "STRESS_FILE", required = true)]
    stress: Vec<PathBuf>,
    /// Features in each pair's greedy subset, and rows of its univariate
    /// ranking.
    #[arg(long, default_value_t = 5, value_name = "K",
          value_parser = clap::value_parser!(u32).range(1..))]
    top: u32,
    /// Write the union of the chosen features here, one per line
    /// (default: print it).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Score raw counts, as the paper did (default: ln(1+x) of the counts,
    /// closer to LDA's assumption of normal classes with equal spread).
    #[arg(long)]
    raw: bool,
    /// Consider only features of these sources (comma separated: qemu,
    /// syscalls, kvm). Default: every feature of the files.
    #[arg(long = "source", value_delimiter = ',', value_name = "SOURCES")]
    sources: Vec<vmwatch::features::Source>,
    /// Fewest rows (windows) a file must have.
    #[arg(long, default_value_t = 10, value_name = "N")]
    min_rows: usize,
    /// Keep the selection's probe cost within this percentage of one CPU
    /// per VM: a probe costs its hits per second (its highest mean rate in
    /// any of the files) times --hit-cost. The greedy subsets skip probes
    /// that would exceed it. Only `qemu:` probes are charged: the syscall and
    /// KVM sources cost the same whichever of their features are chosen.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    budget: Option<f64>,
    /// CPU time one probe hit costs in the traced QEMU thread, in ns (Linux
    /// 6.18 here: about 1,070 for a 1-byte nop site, 830 for a 5-byte nop;
    /// see docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 1000.0, value_name = "NS", value_parser = parse_ns)]
    hit_cost: f64,
}

fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a percentage (e.g. 0.5)")),
    }
}

fn parse_ns(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of nanoseconds")),
    }
}

/// What counting each `qemu:` probe costs, as a percentage of one CPU.
struct ProbeCosts {
    /// Highest mean hits per second of each probe in any file.
    peak_rate: HashMap<String, f64>,
    hit_cost_ns: f64,
}

impl ProbeCosts {
    fn new(tables: &[&Table], hit_cost_ns: f64) -> Self {
        let mut peak_rate: HashMap<String, f64> = HashMap::new();
        for t in tables {
            let probes: Vec<String> = t
                .features
                .iter()
                .filter(|f| f.starts_with(vmwatch::features::QEMU))
                .cloned()
                .collect();
            for (f, r) in probes.iter().zip(t.mean_rates(&probes)) {
                let peak = peak_rate.entry(f.clone()).or_insert(0.0);
                *peak = peak.max(r);
            }
        }
        Self {
            peak_rate,
            hit_cost_ns,
        }
    }

    fn rate(&self, feature: &str) -> f64 {
        self.peak_rate.get(feature).copied().unwrap_or(0.0)
    }

    /// Percent of one CPU.
    fn percent(&self, feature: &str) -> f64 {
        self.rate(feature) * self.hit_cost_ns * 1e-9 * 100.0
    }
}

/// One baseline-vs-stress comparison.
struct Pair {
    name: String,
    path: PathBuf,
    rows: usize,
    /// Features nonzero in at least one of the two files.
    features: Vec<String>,
    scores: PairScores,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let transform = if args.raw {
        Transform::Raw
    } else {
        Transform::Log1p
    };
    let top = args.top as usize;
    let baseline = read(&args.baseline, args.min_rows)?;
    let stresses = args
        .stress
        .iter()
        .map(|path| Ok((path, read(path, args.min_rows)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut tables = vec![&baseline];
    tables.extend(stresses.iter().map(|(_, t)| t));
    let costs = ProbeCosts::new(&tables, args.hit_cost);
    // The union of the subsets so far (pair order, then selection order)
    // and what it costs: a later pair may reuse its features for free and
    // spend only what is left.
    let mut union: Vec<String> = Vec::new();
    let mut chosen: HashSet<String> = HashSet::new();
    let mut spent = 0.0;
    let mut pairs = Vec::new();
    for (path, stress) in stresses {
        let features = Table::nonzero_features(&[&baseline, &stress], &args.sources);
        let cost: Vec<f64> = features
            .iter()
            .map(|f| {
                if chosen.contains(f) {
                    0.0
                } else {
                    costs.percent(f)
                }
            })
            .collect();
        let budget = args.budget.map(|limit| Budget {
            cost: &cost,
            limit: limit - spent,
        });
        let scores = score_pair(
            baseline.project(&features).view(),
            stress.project(&features).view(),
            top,
            transform,
            budget,
        )
        .with_context(|| {
            format!(
                "scoring {} against {}",
                path.display(),
                args.baseline.display()
            )
        })?;
        for step in &scores.greedy {
            let f = &features[step.feature];
            if chosen.insert(f.clone()) {
                spent += costs.percent(f);
                union.push(f.clone());
            }
        }
        pairs.push(Pair {
            name: pair_name(&stress, path),
            path: path.clone(),
            rows: stress.len(),
            features,
            scores,
        });
    }
    disambiguate(&mut pairs);

    let mut out = String::new();
    report(&mut out, &args, &baseline, &pairs, transform, top);
    cost_report(&mut out, &args, &costs, &union);
    match &args.output {
        Some(path) => {
            let header = features_header(&args, transform, top);
            // Atomic (temp file + rename): a reader never sees a half list.
            vmwatch::atomic::write(path, features_file(&header, &union).as_bytes())?;
            tracing::info!("wrote {} features to {}", union.len(), path.display());
        }
        None => {
            writeln!(out, "\nselected features (union of the subsets):").unwrap();
            for f in &union {
                writeln!(out, "{f}").unwrap();
            }
        }
    }
    // With `-o /dev/stdout` the feature list alone goes to stdout.
    if args.output.as_deref().is_some_and(super::is_stdout) {
        std::io::stderr().lock().write_all(out.as_bytes())?;
    } else {
        std::io::stdout().lock().write_all(out.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path, min_rows: usize) -> Result<Table> {
    let t = Table::read(path)?;
    if t.len() < min_rows {
        bail!(
            "{} has {} rows; select needs at least {min_rows} per file (--min-rows)",
            path.display(),
            t.len()
        );
    }
    Ok(t)
}

/// The stress file's label when all its rows share one, else its stem.
fn pair_name(t: &Table, path: &Path) -> String {
    if let Some(first) = t.keys.first() {
        if !first.label.is_empty() && t.keys.iter().all(|k| k.label == first.label) {
            return first.label.clone();
        }
    }
    stem(path)
}

fn stem(path: &Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    for ext in [".csv.gz", ".csv", ".gz"] {
        if let Some(s) = name.strip_suffix(ext) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    name
}

/// Two files with the same label get their file names added.
fn disambiguate(pairs: &mut [Pair]) {
    let names: Vec<String> = pairs.iter().map(|p| p.name.clone()).collect();
    for p in pairs.iter_mut() {
        if names.iter().filter(|n| **n == p.name).count() > 1 {
            p.name = format!("{} ({})", p.name, p.path.display());
        }
    }
}

fn report(
    out: &mut String,
    args: &Args,
    baseline: &Table,
    pairs: &[Pair],
    transform: Transform,
    top: usize,
) {
    writeln!(
        out,
        "# baseline {} ({} rows); scores on {}; LDA score = ccr12 (squared canonical correlation)",
        args.baseline.display(),
        baseline.len(),
        transform.describe()
    )
    .unwrap();
    // Table 1 of the paper: the best single feature per pair.
    let rows: Vec<[String; 3]> = pairs
        .iter()
        .map(|p| match p.scores.top_univariate(1).first() {
            Some(&(j, s)) => [p.name.clone(), p.features[j].clone(), score(s)],
            None => [p.name.clone(), "(none)".into(), score(0.0)],
        })
        .collect();
    table(out, "", ["pair", "feature", "score"], &rows);

    for p in pairs {
        writeln!(
            out,
            "\n## {} vs {} ({}: {} rows, {} nonzero features)",
            pair_name(baseline, &args.baseline),
            p.name,
            p.path.display(),
            p.rows,
            p.features.len()
        )
        .unwrap();
        writeln!(
            out,
            "greedy subset (ccr12 of the subset after each addition):"
        )
        .unwrap();
        if p.scores.greedy.is_empty() {
            writeln!(out, "  (no feature separates the two files)").unwrap();
        }
        let rows: Vec<[String; 3]> = p
            .scores
            .greedy
            .iter()
            .enumerate()
            .map(|(i, s)| {
                [
                    format!("{}", i + 1),
                    p.features[s.feature].clone(),
                    score(s.ccr12),
                ]
            })
            .collect();
        table(out, "  ", ["#", "feature", "subset ccr12"], &rows);
        writeln!(out, "top {top} features alone:").unwrap();
        let rows: Vec<[String; 3]> = p
            .scores
            .top_univariate(top)
            .iter()
            .enumerate()
            .map(|(i, &(j, s))| [format!("{}", i + 1), p.features[j].clone(), score(s)])
            .collect();
        table(out, "  ", ["#", "feature", "ccr12"], &rows);
    }
}

/// What counting the selection costs the VM, by the cost model of --budget.
fn cost_report(out: &mut String, args: &Args, costs: &ProbeCosts, union: &[String]) {
    let probes: Vec<&String> = union
        .iter()
        .filter(|f| f.starts_with(vmwatch::features::QEMU))
        .collect();
    let rate: f64 = probes.iter().map(|f| costs.rate(f)).sum();
    let percent: f64 = probes.iter().map(|f| costs.percent(f)).sum();
    let budget = args
        .budget
        .map_or_else(String::new, |b| format!(" (budget {b}%)"));
    writeln!(
        out,
        "\ncost of the selection: {} probes, at most {rate:.0} hits/s per VM (each probe's highest \
         mean rate in the files) x {:.0} ns = {percent:.3}% of one CPU{budget}",
        probes.len(),
        args.hit_cost
    )
    .unwrap();
}

fn score(s: f64) -> String {
    format!("{s:.4}")
}

/// Text columns, the last one (numbers) right-aligned.
fn table(out: &mut String, indent: &str, head: [&str; 3], rows: &[[String; 3]]) {
    let mut width = head.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |c: [&str; 3]| {
        writeln!(
            out,
            "{indent}{:<w0$}  {:<w1$}  {:>w2$}",
            c[0],
            c[1],
            c[2],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        )
        .unwrap();
    };
    line(head);
    for r in rows {
        line([r[0].as_str(), r[1].as_str(), r[2].as_str()]);
    }
}

fn features_header(args: &Args, transform: Transform, top: usize) -> String {
    let stress: Vec<String> = args
        .stress
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let budget = args.budget.map_or_else(String::new, |b| {
        format!(
            "# probe cost kept within {b}% of one CPU at {:.0} ns per hit\n",
            args.hit_cost
        )
    });
    format!(
        "# vmwatch select: baseline {}; stress {}\n\
         # union of each pair's greedy LDA subset (ccr12, up to {top} features, {})\n{budget}",
        args.baseline.display(),
        stress.join(", "),
        transform.describe()
    )
}

fn features_file(header: &str, features: &[String]) -> String {
    let mut s = header.to_string();
    for f in features {
        s.push_str(f);
        s.push('\n');
    }
    s
}
