//! `vmwatch select`: LDA scores of each feature for baseline-vs-stress
//! pairs (the paper's Table 1) and a multivariate subset per pair.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use vmwatch_core::dataset::Table;
use vmwatch_core::select::{self, Pair, SelectConfig, Selection, Transform};

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
    /// syscalls, kvm, perf, seq). Default: every feature of the files.
    #[arg(long = "source", value_delimiter = ',', value_name = "SOURCES")]
    sources: Vec<vmwatch_core::features::Source>,
    /// Fewest rows (windows) a file must have.
    #[arg(long, default_value_t = 10, value_name = "N")]
    min_rows: usize,
    /// Keep the selection's cost within this percentage of one CPU per
    /// VM. Each piece of kernel work the features need is charged once, at
    /// its highest mean rate in any of the files: a probe's hits times
    /// --hit-cost (for `qemu:`, and the probes `seq:` and `arg:` features
    /// read), tracking them for `seq:` (25 ns a hit), reading arguments for
    /// `arg:` (100 ns a hit), the syscall counter for any `sys:` (26 ns a
    /// syscall), each KVM tracepoint (26 ns an event), the perf counters for
    /// any `perf:` (1.7 µs a context switch, 150 ns a fault). The greedy
    /// subsets skip features that would exceed it.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    budget: Option<f64>,
    /// CPU time one probe hit costs in the traced QEMU thread, in ns (Linux
    /// 6.18 here: about 1,070 for a 1-byte nop site, 830 for a 5-byte nop;
    /// see docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 1000.0, value_name = "NS", value_parser = parse_ns)]
    hit_cost: f64,
}

fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    super::parse_checked(
        s.trim_end_matches('%'),
        |v: &f64| v.is_finite() && *v >= 0.0,
        || format!("`{s}` is not a percentage (e.g. 0.5)"),
    )
}

fn parse_ns(s: &str) -> std::result::Result<f64, String> {
    super::parse_checked(
        s,
        |v: &f64| v.is_finite() && *v > 0.0,
        || format!("`{s}` is not a positive number of nanoseconds"),
    )
}

pub fn run(args: Args) -> Result<ExitCode> {
    let transform = if args.raw {
        Transform::Raw
    } else {
        Transform::Log1p
    };
    let top = args.top as usize;
    let baseline = select::read(&args.baseline, args.min_rows)?;
    let stresses = args
        .stress
        .iter()
        .map(|path| Ok((path.clone(), select::read(path, args.min_rows)?)))
        .collect::<Result<Vec<_>>>()?;
    let config = SelectConfig {
        top,
        transform,
        sources: args.sources.clone(),
        budget: args.budget,
        hit_cost_ns: args.hit_cost,
    };
    let selection = select::select((&args.baseline, &baseline), &stresses, &config)?;

    let mut out = String::new();
    report(&mut out, &args, &baseline, &selection.pairs, transform, top);
    cost_report(&mut out, &args, &selection);
    let union = &selection.union;
    match &args.output {
        Some(path) => {
            let header = features_header(&args, transform, top);
            // Atomic (temp file + rename): a reader never sees a half list.
            vmwatch_core::atomic::write(path, selection.list().to_text(&header).as_bytes())?;
            tracing::info!("wrote {} features to {}", union.len(), path.display());
        }
        None => {
            writeln!(out, "\nselected features (union of the subsets):").unwrap();
            out.push_str(&selection.list().to_text(""));
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
            baseline.scenario_name(&args.baseline),
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
fn cost_report(out: &mut String, args: &Args, selection: &Selection) {
    let cost = selection.costs.of(&selection.list());
    let budget = args
        .budget
        .map_or_else(String::new, |b| format!(" (budget {b}%)"));
    let parts: Vec<String> = cost
        .by_kind
        .iter()
        .map(|(kind, p)| format!("{kind} {p:.3}%"))
        .collect();
    let parts = if parts.len() > 1 {
        format!(" ({})", parts.join(", "))
    } else {
        String::new()
    };
    writeln!(
        out,
        "\ncost of the selection: {} probes, at most {:.0} hits/s per VM (each probe's highest \
         mean rate in the files) x {:.0} ns; {:.3}% of one CPU in all{parts}{budget}",
        cost.probes, cost.rate, args.hit_cost, cost.percent
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
            "# cost kept within {b}% of one CPU at {:.0} ns per probe hit\n",
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
