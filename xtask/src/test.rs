//! `cargo xtask test`: the project's full test entry point.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, note};
use crate::{deps, qemu};

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

    // cargo test runs last so that its summary closes the output.
    let mut test = cargo_cmd(&["test", "--workspace"]);
    test.args(cargo_test_args).env("VMWATCH_QEMU", &qemu_path);
    let steps: Vec<(&str, Command)> = vec![
        (
            "cargo fmt --check",
            cargo_cmd(&["fmt", "--all", "--", "--check"]),
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

    let mut failed = Vec::new();
    for (name, mut cmd) in steps {
        if let Err(e) = util::run_inherit(&mut cmd) {
            eprintln!("xtask: {name} failed: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("{} of 3 checks failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}
