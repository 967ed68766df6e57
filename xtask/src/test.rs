//! `cargo xtask test`: the project's full test entry point.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, note};
use crate::{deps, fuzz, package, qemu};

pub fn run(cargo_test_args: &[String]) -> Result<()> {
    deps::ensure().context("setting up the system packages failed")?;

    let qemu_path = match std::env::var_os("VMWATCH_QEMU").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            note(format!(
                "using VMWATCH_QEMU={} from the environment (not building QEMU)",
                path.display()
            ));
            path
        }
        None => {
            let build = qemu::ensure(&qemu::Options::default())
                .context("building the instrumented QEMU failed")?;
            note(format!("VMWATCH_QEMU={}", build.binary.display()));
            build.binary
        }
    };
    if !qemu_path.is_file() {
        bail!("VMWATCH_QEMU={} is not a file", qemu_path.display());
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = util::repo_root();
    let cargo_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root).args(args);
        cmd
    };

    // cargo test runs last of the cargo checks; the packaging checks,
    // fuzzing and the lab smoke test follow.
    let mut test = cargo_cmd(&["test", "--workspace"]);
    test.args(cargo_test_args).env("VMWATCH_QEMU", &qemu_path);
    let steps: Vec<(&str, Command)> = vec![
        (
            "cargo fmt --check",
            cargo_cmd(&["fmt", "--all", "--", "--check"]),
        ),
        // fuzz/ is a workspace of its own: `--all` does not reach it.
        (
            "cargo fmt --check (fuzz/)",
            cargo_cmd(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]),
        ),
        (
            "cargo clippy",
            cargo_cmd(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        ("cargo test", test),
    ];

    // The steps, the packaging step, the fuzz step and the lab smoke test.
    let checks = steps.len() + 3;
    let mut failed = Vec::new();
    for (name, mut cmd) in steps {
        if let Err(e) = util::run_inherit(&mut cmd) {
            eprintln!("xtask: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    // systemd-analyze, promtool and the .deb (package.rs); a missing tool
    // is skipped with its reason, except in CI.
    if let Err(e) = package::test_step() {
        eprintln!("xtask: packaging failed: {e:#}");
        failed.push("packaging");
    }
    let fuzz = fuzz::Options {
        seconds: fuzz::TEST_SECONDS,
        targets: Vec::new(),
        optional: true,
    };
    if let Err(e) = fuzz::run(&fuzz) {
        eprintln!("xtask: fuzz failed: {e:#}");
        failed.push("fuzz");
    }
    if let Err(e) = lab_smoke() {
        eprintln!("xtask: lab smoke test failed: {e:#}");
        failed.push("lab smoke test");
    }
    if !failed.is_empty() {
        bail!(
            "{} of {checks} checks failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The lab smoke test (docs/LAB.md): builds the lab guest if absent, boots one
/// VM on the lab network, records 3 windows of `idle` with vmwatch (release
/// build) and checks that the rows belong to that VM's QEMU pid and that
/// probes were counted.
fn lab_smoke() -> Result<()> {
    if !util::is_root()? {
        note("lab smoke test SKIPPED: it needs root (network namespace, BPF); CI runs as root");
        return Ok(());
    }
    note("lab smoke test: 3 windows of `idle` on one VM (about a minute)");
    crate::lab::record::smoke(None)
}
