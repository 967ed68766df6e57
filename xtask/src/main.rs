//! Project automation for vmwatch: `cargo xtask <command>`.

mod bench;
mod demo;
mod deps;
mod eval;
mod fuzz;
mod lab;
mod package;
mod qemu;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Project automation for vmwatch (run as `cargo xtask <command>`).
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages vmwatch needs to build and test (listed in
    /// xtask/packages.txt) and add a deb-src entry for `apt-get source qemu`.
    ///
    /// Idempotent: packages already installed are left alone, and apt-get runs only
    /// when something is missing. Installing needs root.
    Deps,

    /// Build qemu-system-x86_64 from Debian's source package with the dtrace trace
    /// backend (USDT probes), cached outside the repository: QEMU 10.0 (the
    /// lab's, the default) or 7.2 lab-style, or 10.0 as Fedora/RHEL build it.
    ///
    /// The cache is $VMWATCH_CACHE, else $XDG_CACHE_HOME/vmwatch, else
    /// $HOME/.cache/vmwatch; each build has its own directory there. A build is
    /// reused while its recipe (flags, source version, build code) is unchanged.
    /// See docs/QEMU.md.
    Qemu {
        /// Which QEMU to build.
        #[arg(long, value_enum, default_value_t = qemu::Variant::default())]
        build: qemu::Variant,
        /// Print only the path of qemu-system-x86_64 (building it first if needed);
        /// progress goes to stderr.
        #[arg(long, conflicts_with = "diff")]
        print_path: bool,
        /// Rebuild --build even if a complete build of its current recipe exists.
        #[arg(long)]
        force: bool,
        /// Parallel compile jobs (default: ninja's choice).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Compare the qemu probe names of --build (the old one) with those of
        /// this build (the new one), building both if needed: added, removed,
        /// likely renamed, and which features of packaging/features.txt and of
        /// the demo's built-in list each has.
        #[arg(long, value_name = "BUILD", value_enum)]
        diff: Option<qemu::Variant>,
    },

    /// The full test run (what CI runs): deps, the three QEMU builds of `cargo
    /// xtask qemu` (cached), `cargo fmt --check`, `cargo clippy -D warnings`,
    /// `cargo test --workspace` with VMWATCH_QEMU set to the default build
    /// (lab-10.0), `cargo test --test qemu` against each other build (lab-7.2,
    /// stock-10.0; VMWATCH_QEMU_FLAVOUR says lab or stock), the packaging
    /// checks (`systemd-analyze verify` of the
    /// unit, `promtool` on the alert rules, their tests, the scrape config and
    /// the dashboard's queries, and `cargo xtask package`; a missing tool is
    /// skipped, except in CI), the fuzz targets for 30 s each (`cargo xtask
    /// fuzz`; skipped without a nightly toolchain, except in CI), and the lab
    /// smoke test (`cargo xtask lab smoke`: one VM, 3 windows of `idle`; needs
    /// root).
    ///
    /// All checks run even if one fails (a 10.0 build that fails is a failed
    /// check); the command fails if any failed, and it ends with what ran against
    /// which QEMU. A VMWATCH_QEMU already set in the environment is used instead
    /// of building, and then only that binary is tested.
    Test {
        /// Arguments passed on to `cargo test` (after `--`), e.g.
        /// `cargo xtask test -- probes -- --nocapture`.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },

    /// Build the Debian package (target/debian/vmwatch_VERSION_ARCH.deb, and
    /// its debug symbols, vmwatch-dbgsym) with cargo-deb from
    /// `[package.metadata.deb]`: the release binary, the systemd unit, the
    /// default /etc/vmwatch/agent.toml, the alert rules, scrape example,
    /// dashboard and docs. Then checks it with dpkg-deb (fields, maintainer
    /// scripts, conffiles, every file and mode) and prints its path.
    ///
    /// Installs cargo-deb if missing (`cargo install cargo-deb --locked`).
    /// See docs/AGENT.md.
    Package {
        /// Run the packaging step of `cargo xtask test` instead: the checks
        /// of packaging/ (agent.toml, `systemd-analyze verify`, `promtool`
        /// on the rules, their tests, the scrape example and the
        /// dashboard), then the package. A missing tool is skipped with its
        /// reason, except in CI.
        #[arg(long)]
        test: bool,
    },

    /// Coverage-guided fuzzing (cargo-fuzz, nightly toolchain) of the readers
    /// of dataset, model, feature-list and ELF files: builds fuzz/ and runs
    /// each target for a bounded time, failing on a crash, a hang, or an error
    /// that is not one sentence.
    ///
    /// Installs cargo-fuzz if missing. The committed seeds (fuzz/corpus/) are
    /// only read; new inputs go to fuzz/scratch/, crashes to fuzz/artifacts/.
    /// See fuzz/README.md.
    Fuzz {
        /// Seconds each target runs (libFuzzer would take 0 for "no limit").
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// Targets to run (default: all): dataset, model, features, stapsdt.
        targets: Vec<String>,
    },

    /// The README's main job: boots a lab VM with web load, records normal
    /// windows, trains a model, monitors the VM live while an attack comes and
    /// goes, and sums up (false positives, detection rate, time to detection).
    ///
    /// Builds what is missing first (packages, QEMU, lab guest, vmwatch).
    /// About 6.5 minutes once built. Needs root. See README.md.
    Demo(demo::Args),

    /// The lab: the guest image (Debian kernel + initramfs with workloads and
    /// attack tools), its network namespace, the scenarios, and labelled
    /// recordings with vmwatch. See docs/LAB.md.
    Lab {
        #[command(subcommand)]
        cmd: lab::LabCmd,
    },

    /// Benchmarks: `cargo xtask bench overhead` (vmwatch vs LTTng-UST vs
    /// strace; see docs/PERFORMANCE.md).
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },

    /// Regenerate docs/RESULTS.md from the lab's data/: probe selection
    /// (Table 1), then the paper's evaluation for all probes, selected
    /// probes, syscalls and all sources side by side, with the learning
    /// curve, re-learning and figures (docs/results/). Takes a few minutes.
    Eval {
        /// The lab's dataset directory (from `cargo xtask lab record-all`).
        #[arg(long, default_value = "data")]
        data: std::path::PathBuf,
        /// The report to write.
        #[arg(short, long, default_value = "docs/RESULTS.md")]
        output: std::path::PathBuf,
        /// Cross-validation folds (the paper's protocol uses 5).
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Use this vmwatch binary instead of building target/release/vmwatch.
        #[arg(long)]
        vmwatch: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Deps => deps::ensure().map(|_| ()),
        Cmd::Qemu {
            build,
            print_path,
            force,
            jobs,
            diff,
        } => {
            let opts = |variant, force| qemu::Options {
                variant,
                jobs,
                force,
            };
            let built = qemu::ensure(&opts(build, force))?;
            if let Some(other) = diff {
                // --force rebuilds --build only.
                let new = qemu::ensure(&opts(other, false))?;
                print!("{}", qemu::diff_report(&built, &new)?);
            } else if print_path {
                println!("{}", built.binary.display());
            } else {
                let probes = qemu::count_probes(&built.binary)?;
                println!("build:              {}", built.variant);
                println!("qemu-system-x86_64: {}", built.binary.display());
                println!(
                    "build info:         {}",
                    built.dir.join("BUILD-INFO.json").display()
                );
                println!(
                    "USDT probes:        {} distinct qemu probe names, {} qemu sites ({} stapsdt notes in all)",
                    probes.qemu_names, probes.qemu_sites, probes.sites
                );
                println!(
                    "probe sites:        {} 5-byte nops, {} 1-byte nops",
                    probes.nop5_sites, probes.nop1_sites
                );
            }
            Ok(())
        }
        Cmd::Test { cargo_test_args } => test::run(&cargo_test_args),
        Cmd::Package { test: false } => package::command(),
        Cmd::Package { test: true } => package::test_step(),
        Cmd::Fuzz { seconds, targets } => fuzz::run(&fuzz::Options {
            seconds,
            targets,
            optional: false,
        }),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Lab { cmd } => lab::run(cmd),
        Cmd::Bench { cmd } => bench::run(cmd),
        Cmd::Eval {
            data,
            output,
            folds,
            vmwatch,
        } => eval::run(&eval::Options {
            data,
            output,
            folds,
            vmwatch,
        }),
    }
}
