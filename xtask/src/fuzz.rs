//! `cargo xtask fuzz`, and the fuzz step of `cargo xtask test`: builds the
//! cargo-fuzz targets of fuzz/ with the nightly toolchain, then runs each
//! for a bounded time. The committed seeds (fuzz/corpus/TARGET) are read
//! only; what the fuzzer finds goes to fuzz/scratch/TARGET, which git
//! ignores, so a run never dirties the tree. See fuzz/README.md.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{self, note};

/// The fuzz targets (fuzz/fuzz_targets/NAME.rs).
pub const TARGETS: [&str; 4] = ["dataset", "model", "features", "stapsdt"];

/// Seconds per target in `cargo xtask test`: with the build from scratch
/// (about 3 minutes on 2 cores) the step takes about 5 minutes.
pub const TEST_SECONDS: u64 = 30;

/// The cargo-fuzz release series the commands below are written for.
const CARGO_FUZZ_VERSION: &str = "^0.13";

/// Longest a single input may run before libFuzzer calls it a hang
/// (its default is 20 minutes); inputs are a few KiB and take microseconds.
const INPUT_TIMEOUT_SECS: u64 = 10;

pub struct Options {
    /// Seconds each target runs.
    pub seconds: u64,
    /// Targets to run (empty: all).
    pub targets: Vec<String>,
    /// Skip, saying why, when the nightly toolchain is absent, unless in CI
    /// (CI=true), where that is a failure.
    pub optional: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        opts.targets.iter().map(String::as_str).collect()
    };
    if let Some(bad) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("no fuzz target `{bad}` (targets: {})", TARGETS.join(", "));
    }
    if !nightly_installed() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        if opts.optional && !ci {
            note(
                "fuzz SKIPPED: no nightly toolchain (cargo-fuzz needs one: \
                 `rustup toolchain install nightly`); CI requires it",
            );
            return Ok(());
        }
        bail!("the fuzz targets need the nightly toolchain: `rustup toolchain install nightly`");
    }
    ensure_cargo_fuzz()?;

    let root = util::repo_root();
    let fuzz_dir = root.join("fuzz");
    let started = Instant::now();
    // The same flags as `run` below, so that it finds the build up to date.
    util::run_inherit(cargo_fuzz(&root).args(["build", "--debug-assertions"]))
        .context("building the fuzz targets failed")?;
    note(format!(
        "fuzz targets built in {}",
        util::human_duration(started.elapsed())
    ));

    let mut crashed = Vec::new();
    for target in targets {
        let scratch = fuzz_dir.join("scratch").join(target);
        fs::create_dir_all(&scratch)
            .with_context(|| format!("could not create {}", scratch.display()))?;
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let before = list(&artifacts);
        let log_path = fuzz_dir.join("scratch").join(format!("{target}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("could not create {}", log_path.display()))?;
        let mut cmd = cargo_fuzz(&root);
        cmd.args(["run", "--debug-assertions", target])
            .arg(&scratch)
            .arg(fuzz_dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={}", opts.seconds))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("could not duplicate a file")?)
            .stderr(log);
        note(format!(
            "fuzz {target}: {}s, output in {}",
            opts.seconds,
            log_path.display()
        ));
        let status = cmd
            .status()
            .with_context(|| format!("could not start `{}`", util::display(&cmd)))?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if status.success() {
            note(format!("fuzz {target}: {}, no crash", summary(&text)));
            continue;
        }
        // libFuzzer's report, from the panic (or the sanitizer's or
        // libFuzzer's own error) on: its backtrace and the saved input.
        let lines: Vec<&str> = text.lines().collect();
        let from = lines
            .iter()
            .position(|l| l.contains("panicked at") || l.contains("ERROR: "))
            .unwrap_or(lines.len().saturating_sub(60));
        eprintln!("{}", lines[from..].join("\n"));
        let new: Vec<PathBuf> = list(&artifacts).difference(&before).cloned().collect();
        match new.first() {
            Some(input) => eprintln!(
                "xtask: fuzz target `{target}` failed ({status}): the input is {}; \
                 reproduce with `cargo +nightly fuzz run --debug-assertions {target} {}`",
                input.display(),
                input.display()
            ),
            None => eprintln!(
                "xtask: fuzz target `{target}` failed ({status}) without saving an input; \
                 see {}",
                log_path.display()
            ),
        }
        crashed.push(target);
    }
    note(format!(
        "fuzz step took {}",
        util::human_duration(started.elapsed())
    ));
    if !crashed.is_empty() {
        bail!("fuzz target(s) failed: {}", crashed.join(", "));
    }
    Ok(())
}

/// `cargo +nightly fuzz` in the repository root. The rustup proxy, not
/// $CARGO (the stable cargo that runs xtask), so that `+nightly` works.
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(["+nightly", "fuzz"]);
    // Without cargo-fuzz's own backtrace (of "the target failed") under the
    // target's; RUST_BACKTRACE still applies to the target's panics.
    cmd.env("RUST_LIB_BACKTRACE", "0");
    cmd
}

fn nightly_installed() -> bool {
    // Asking rustup (not running `cargo +nightly`) never installs one.
    Command::new("rustup")
        .args(["toolchain", "list"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.starts_with("nightly"))
        })
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    note("installing cargo-fuzz (about 1.5 minutes on 2 cores)");
    util::run_inherit(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
    .context("installing cargo-fuzz failed")
}

/// The files of `dir` (none if it does not exist).
fn list(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// `Done 123456 runs in 31 second(s)` and the corpus size of libFuzzer's
/// last status line, e.g. `123456 runs in 31 s, corpus 345 inputs`.
fn summary(log: &str) -> String {
    let runs = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done "))
        .map(|rest| rest.replace(" second(s)", " s"));
    let corpus = log
        .lines()
        .rev()
        .find_map(|l| l.split_once(" corp: ").map(|(_, c)| c))
        .and_then(|c| c.split('/').next());
    match (runs, corpus) {
        (Some(runs), Some(n)) => format!("{runs}, corpus {n} inputs"),
        (Some(runs), None) => runs,
        _ => "finished".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_libfuzzer_output() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 9/2Kb exec/s: 0 rss: 40Mb\n\
                   #4000\tDONE   cov: 20 ft: 30 corp: 42/8Kb lim: 4 exec/s: 99 rss: 50Mb\n\
                   Done 4000 runs in 31 second(s)\n";
        assert_eq!(summary(log), "4000 runs in 31 s, corpus 42 inputs");
        assert_eq!(summary(""), "finished");
    }
}
