//! `cargo xtask test`: the project's full test entry point.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, note};
use crate::{deps, fuzz, package, qemu};

fn under_test(b: &qemu::Build) -> QemuUnderTest {
    QemuUnderTest {
        name: b.variant.name().into(),
        binary: b.binary.clone(),
        flavour: Some(b.variant.flavour().name().into()),
    }
}

/// VMWATCH_QEMU (and VMWATCH_QEMU_FLAVOUR, when known) for `cmd`.
fn set_qemu_env(cmd: &mut Command, q: &QemuUnderTest) {
    cmd.env("VMWATCH_QEMU", &q.binary);
    match &q.flavour {
        Some(f) => cmd.env("VMWATCH_QEMU_FLAVOUR", f),
        None => cmd.env_remove("VMWATCH_QEMU_FLAVOUR"),
    };
}

/// A QEMU binary the tests run against.
struct QemuUnderTest {
    /// The build's name (`lab-7.2`, …), or `VMWATCH_QEMU` when given.
    name: String,
    binary: PathBuf,
    /// `lab` or `stock` (tests/qemu.rs checks the probe sites accordingly); unset
    /// for a VMWATCH_QEMU given without VMWATCH_QEMU_FLAVOUR.
    flavour: Option<String>,
}

pub fn run(cargo_test_args: &[String]) -> Result<()> {
    deps::ensure().context("setting up the system packages failed")?;

    // The whole suite runs against the default build; tests/qemu.rs runs again
    // against each other build. A build that fails is a failed check, not a stop.
    let mut failed: Vec<String> = Vec::new();
    let mut others: Vec<QemuUnderTest> = Vec::new();
    let main = match std::env::var_os("VMWATCH_QEMU").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            note(format!(
                "using VMWATCH_QEMU={} from the environment (not building QEMU; the other QEMU builds are not tested)",
                path.display()
            ));
            QemuUnderTest {
                name: "VMWATCH_QEMU".into(),
                binary: path,
                flavour: std::env::var("VMWATCH_QEMU_FLAVOUR").ok(),
            }
        }
        None => {
            let default = qemu::Variant::default();
            let build = qemu::ensure(&qemu::Options::default())
                .context("building the instrumented QEMU failed")?;
            note(format!(
                "VMWATCH_QEMU={} ({default})",
                build.binary.display()
            ));
            for variant in qemu::Variant::ALL.into_iter().filter(|v| *v != default) {
                let opts = qemu::Options {
                    variant,
                    ..qemu::Options::default()
                };
                match qemu::ensure(&opts) {
                    Ok(b) => {
                        note(format!("QEMU {variant}: {}", b.binary.display()));
                        others.push(under_test(&b));
                    }
                    Err(e) => {
                        eprintln!("xtask: building QEMU {variant} failed: {e:#}");
                        failed.push(format!("QEMU {variant} build"));
                    }
                }
            }
            under_test(&build)
        }
    };
    if !main.binary.is_file() {
        bail!("VMWATCH_QEMU={} is not a file", main.binary.display());
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
    test.args(cargo_test_args);
    set_qemu_env(&mut test, &main);
    let mut steps: Vec<(String, Command)> = vec![
        (
            "cargo fmt --check".into(),
            cargo_cmd(&["fmt", "--all", "--", "--check"]),
        ),
        // fuzz/ is a workspace of its own: `--all` does not reach it.
        (
            "cargo fmt --check (fuzz/)".into(),
            cargo_cmd(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]),
        ),
        (
            "cargo clippy".into(),
            cargo_cmd(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        (format!("cargo test (QEMU {})", main.name), test),
    ];
    // tests/qemu.rs (probe discovery, attaching every site, per-PID counts,
    // semaphores) against the other builds.
    for q in &others {
        let mut cmd = cargo_cmd(&["test", "--test", "qemu"]);
        cmd.args(cargo_test_args);
        set_qemu_env(&mut cmd, q);
        steps.push((format!("cargo test --test qemu (QEMU {})", q.name), cmd));
    }

    // The steps, the QEMU builds that failed, the packaging step, the fuzz step
    // and the lab smoke test.
    let checks = steps.len() + failed.len() + 3;
    let mut ran: Vec<(String, bool)> = Vec::new();
    for (name, mut cmd) in steps {
        let ok = match util::run_inherit(&mut cmd) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("xtask: {name} failed: {e:#}");
                failed.push(name.clone());
                false
            }
        };
        ran.push((name, ok));
    }
    // systemd-analyze, promtool and the .deb (package.rs); a missing tool
    // is skipped with its reason, except in CI.
    if let Err(e) = package::test_step() {
        eprintln!("xtask: packaging failed: {e:#}");
        failed.push("packaging".into());
    }
    let fuzz = fuzz::Options {
        seconds: fuzz::TEST_SECONDS,
        targets: Vec::new(),
        optional: true,
    };
    if let Err(e) = fuzz::run(&fuzz) {
        eprintln!("xtask: fuzz failed: {e:#}");
        failed.push("fuzz".into());
    }
    if let Err(e) = lab_smoke() {
        eprintln!("xtask: lab smoke test failed: {e:#}");
        failed.push("lab smoke test".into());
    }
    // What ran against which QEMU.
    note("QEMU builds tested:");
    for q in std::iter::once(&main).chain(&others) {
        let runs: Vec<String> = ran
            .iter()
            .filter(|(name, _)| name.ends_with(&format!("(QEMU {})", q.name)))
            .map(|(name, ok)| format!("{name}: {}", if *ok { "passed" } else { "FAILED" }))
            .collect();
        note(format!(
            "  {} [{}] {}: {}",
            q.name,
            q.flavour
                .as_deref()
                .unwrap_or("flavour from BUILD-INFO.json"),
            q.binary.display(),
            runs.join("; ")
        ));
    }
    for f in failed.iter().filter(|f| f.ends_with(" build")) {
        note(format!("  {f} FAILED: its tests did not run"));
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
/// probes were counted; then a phased recording with windows of both phases.
fn lab_smoke() -> Result<()> {
    if !util::is_root()? {
        note("lab smoke test SKIPPED: it needs root (network namespace, BPF); CI runs as root");
        return Ok(());
    }
    note("lab smoke test: 3 windows of `idle`, then 16 phased windows of `synflood-source`, on one VM (about two minutes)");
    crate::lab::record::smoke(None)
}
