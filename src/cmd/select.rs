//! `vmwatch select`: LDA scores of each feature for baseline-vs-stress
//! pairs (the paper's Table 1) and a multivariate subset per pair.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use vmwatch::dataset::Table;
use vmwatch::select::{score_pair, PairScores, Transform};

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
    let mut pairs = Vec::new();
    for path in &args.stress {
        let stress = read(path, args.min_rows)?;
        let features = Table::nonzero_features(&[&baseline, &stress], &args.sources);
        let scores = score_pair(
            baseline.project(&features).view(),
            stress.project(&features).view(),
            top,
            transform,
        )
        .with_context(|| {
            format!(
                "scoring {} against {}",
                path.display(),
                args.baseline.display()
            )
        })?;
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
    let union = union(&pairs);
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
    std::io::stdout().lock().write_all(out.as_bytes())?;
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

/// Union of the greedy subsets, in pair order then selection order.
fn union(pairs: &[Pair]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in pairs {
        for s in &p.scores.greedy {
            let f = &p.features[s.feature];
            if seen.insert(f.as_str()) {
                out.push(f.clone());
            }
        }
    }
    out
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
    format!(
        "# vmwatch select: baseline {}; stress {}\n\
         # union of each pair's greedy LDA subset (ccr12, up to {top} features, {})\n",
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
