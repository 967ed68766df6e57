//! `cargo xtask lab`: the lab's guest (Debian's kernel + an initramfs with
//! busybox, stress-ng, a web shop and the attack tools + a virtio data disk) and a
//! runner that boots it with the instrumented QEMU.
//!
//! Cache layout (`<cache>` is `util::cache_dir()`, shared with `cargo xtask qemu`):
//!
//! ```text
//! <cache>/lab/<hash>/vmlinuz               Debian's kernel
//! <cache>/lab/<hash>/config-<release>      its configuration (for reference)
//! <cache>/lab/<hash>/initramfs.cpio.gz     the guest's root file system
//! <cache>/lab/<hash>/disk.raw              the data disk (ext4), copied per boot
//! <cache>/lab/<hash>/BUILD-INFO.json       what was built from what
//! <cache>/lab/<hash>/build.log             full build output
//! <cache>/lab/<hash>/COMPLETE              written last: the build is good
//! <cache>/lab/current -> <hash>            the latest good build
//! <cache>/lab/.work-<hash>/                a build in progress
//! <cache>/lab/runs/                        per-boot directories (removed after)
//! ```
//!
//! `<hash>` covers the recipe: the text of `recipe.rs`, `cpio.rs`, `kmod.rs`,
//! `ldd.rs` and the guest files, the kernel package and version apt would fetch,
//! and the path, size and mtime of every host file copied into the guest (so a
//! package upgrade rebuilds).

pub mod accel;
mod cpio;
mod kmod;
mod ldd;
pub mod load;
pub mod net;
pub mod phases;
mod recipe;
pub mod record;
pub mod scenario;
pub mod tools;
pub mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use sha2::{Digest, Sha256};

use crate::deps;
use crate::qemu;
use crate::util::{self, note};

/// Bumped when the cache layout changes incompatibly.
const LAYOUT_VERSION: &str = "vmwatch-lab-cache-1";
const MARKER: &str = "COMPLETE";
const MANIFEST: &str = "BUILD-INFO.json";

/// The lab: guest build, network, VM runner, scenarios and recordings.
#[derive(Subcommand)]
pub enum LabCmd {
    /// Build the guest (kernel, initramfs, data disk) into the cache, unless a
    /// complete build of the current recipe is there. Prints the build directory.
    ///
    /// Installs missing packages of xtask/packages.txt first (root). Takes about a
    /// minute; see docs/LAB.md.
    Build {
        /// Rebuild even if a complete build of the current recipe exists.
        #[arg(long)]
        force: bool,
    },

    /// Smoke test: create the lab network, boot one guest (building QEMU and the
    /// guest first if needed), wait for its readiness line and its web server,
    /// run the scenario (host side included) for a while, tear everything down.
    ///
    /// Needs root (network namespace). Ctrl-C stops everything cleanly.
    Boot {
        /// The scenario (see docs/LAB.md for the list).
        #[arg(long, default_value = "idle")]
        scenario: String,
        /// Seconds to keep the VM running after it is ready.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Seconds to wait for the readiness line.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Accelerator: `auto` uses KVM if a trial boot shows it works here
        /// (cached), else TCG.
        #[arg(long, value_enum, default_value_t = accel::AccelChoice::Auto)]
        accel: accel::AccelChoice,
        /// The QEMU the VM runs (`cargo xtask qemu --build`).
        #[arg(long, value_enum, default_value_t = qemu::Variant::default())]
        qemu: qemu::Variant,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u32,
        /// Seed of the client load.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// No NIC and no network namespace (only scenarios without network).
        #[arg(long)]
        no_net: bool,
        /// Keep the console log in this file.
        #[arg(long)]
        console_log: Option<PathBuf>,
        /// Extra kernel command line word (repeatable), e.g. `vmwatch.debug=1`
        /// (the guest reports its state after the readiness line) or `loglevel=7`.
        #[arg(long = "kernel-arg", value_name = "WORD")]
        kernel_args: Vec<String>,
    },

    /// Record one scenario: boot, start the scenario, run `vmwatch record
    /// --pid <QEMU pid> --source qemu,syscalls,kvm,perf,arg --label SCENARIO`, tear down,
    /// and check the rows (one per VM and window, probes counted).
    ///
    /// Builds QEMU, the guest and vmwatch (release) first if needed. Needs root.
    Record {
        /// The scenario (see docs/LAB.md for the list).
        #[arg(long)]
        scenario: String,
        #[command(flatten)]
        run: RunArgs,
        /// Seed of the client load (VM i gets seed + i).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (`.csv` or `.csv.gz`).
        #[arg(short, long)]
        output: PathBuf,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },

    /// Record every scenario into OUT_DIR/<scenario>.csv.gz, with a progress
    /// line per scenario, a summary table and OUT_DIR/MANIFEST.json (QEMU build,
    /// guest kernel, accelerator, seeds, vmwatch version, command, date).
    ///
    /// A failed scenario does not stop the others; the command fails at the end.
    RecordAll {
        #[command(flatten)]
        run: RunArgs,
        /// Base seed (scenario i uses seed + 1000 i).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory.
        #[arg(long, default_value = "data")]
        out_dir: PathBuf,
        /// Only these scenarios (repeatable; default: all).
        #[arg(long = "only", value_name = "SCENARIO")]
        only: Vec<String>,
        /// Boots per scenario (boot k of scenario i: seed + 1000 i + k, file
        /// OUT_DIR/<scenario>-<k+1>.csv.gz; one boot: <scenario>.csv.gz).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=999))]
        boots: u32,
    },

    /// The CI smoke test: record 3 windows of `idle` on one VM and check that
    /// the rows belong to its QEMU pid and that probes were counted.
    Smoke {
        /// Use this vmwatch binary instead of building target/release/vmwatch.
        #[arg(long)]
        vmwatch: Option<PathBuf>,
    },
}

/// What `lab record` and `lab record-all` share: how each VM runs and is recorded.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Windows to record (per scenario).
    #[arg(long, default_value_t = 150)]
    windows: u32,
    /// Window length (vmwatch's --interval).
    #[arg(long, default_value = "2s")]
    interval: String,
    /// VMs to boot (all run the scenario; each gets its own rows).
    #[arg(long, default_value_t = 1)]
    vms: usize,
    /// The QEMU the VMs run (`cargo xtask qemu --build`; the committed data/
    /// was recorded on lab-7.2).
    #[arg(long, value_enum, default_value_t = qemu::Variant::default())]
    qemu: qemu::Variant,
    /// vmwatch's cost budget (`--budget`): `none` (the default here: the
    /// lab's recordings are the exact reference the governor is measured
    /// against), or a percentage of one CPU, as the agent counts.
    #[arg(long, default_value = "none", value_name = "PERCENT|none",
          value_parser = |s: &str| vmwatch_core::govern::parse_budget(s).map(|_| s.to_string()))]
    budget: String,
    /// Accelerator: `auto` uses KVM if a trial boot shows it works here
    /// (cached), else TCG.
    #[arg(long, value_enum, default_value_t = accel::AccelChoice::Auto)]
    accel: accel::AccelChoice,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Use this vmwatch binary instead of building target/release/vmwatch.
    #[arg(long)]
    vmwatch: Option<PathBuf>,
    /// Phased recording: one boot alternates normal phases (the `web` load)
    /// and anomalous ones (the scenario on top) of about NORMAL and ANOMALY
    /// seconds (each drawn from the seed within ±50%), and each window is
    /// labelled `web`, SCENARIO, or `switch` (docs/LAB.md). Not for normal
    /// scenarios.
    #[arg(long, value_name = "NORMAL,ANOMALY",
          value_parser = |s: &str| phases::Phases::parse(s).map_err(|e| format!("{e:#}")))]
    phases: Option<phases::Phases>,
}

impl RunArgs {
    /// The options of the recording (the accelerator chosen).
    fn resolve(self) -> Result<record::RunOpts> {
        Ok(record::RunOpts {
            windows: self.windows,
            interval: self.interval,
            vms: self.vms,
            qemu: self.qemu,
            budget: self.budget,
            phases: self.phases,
            accel: accel::resolve(self.accel)?,
            memory_mib: self.memory,
            vmwatch: self.vmwatch,
        })
    }
}

pub fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Build { force } => {
            let g = ensure(force)?;
            println!("{}", g.dir.display());
            Ok(())
        }
        LabCmd::Boot {
            scenario,
            seconds,
            timeout,
            accel,
            qemu,
            memory,
            seed,
            no_net,
            console_log,
            kernel_args,
        } => boot(&BootArgs {
            scenario,
            seconds,
            timeout,
            accel: accel::resolve(accel)?,
            qemu,
            memory,
            seed,
            network: !no_net,
            console_log,
            kernel_args,
        }),
        LabCmd::Record {
            scenario,
            run,
            seed,
            output,
            force,
        } => {
            let run = run.resolve()?;
            let (windows, vms) = (run.windows, run.vms);
            let r = record::record(&record::RecordOpts {
                scenario: scenario::find(&scenario)?,
                run,
                seed,
                output: output.clone(),
                force,
            })?;
            println!(
                "{}: {} rows ({windows} windows x {vms} VMs), {} features, {:.0} QEMU probe hits per window",
                output.display(),
                r.rows,
                r.features,
                r.qemu_hits_per_window
            );
            Ok(())
        }
        LabCmd::RecordAll {
            run,
            seed,
            out_dir,
            only,
            boots,
        } => record::record_all(&record::RecordAllOpts {
            run: run.resolve()?,
            seed,
            out_dir,
            only,
            boots,
        }),
        LabCmd::Smoke { vmwatch } => record::smoke(vmwatch.as_deref()),
    }
}

/// A complete guest build.
pub struct Guest {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
}

impl Guest {
    fn at(dir: PathBuf) -> Guest {
        Guest {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio.gz"),
            disk: dir.join("disk.raw"),
            dir,
        }
    }

    fn is_complete(&self) -> bool {
        self.dir.join(MARKER).is_file()
            && self.kernel.is_file()
            && self.initrd.is_file()
            && self.disk.is_file()
    }
}

fn lab_root() -> Result<PathBuf> {
    Ok(util::cache_dir()?.join("lab"))
}

/// Returns the cached guest for the current recipe, building it first if needed.
pub fn ensure(force: bool) -> Result<Guest> {
    let root = lab_root()?;
    fs::create_dir_all(&root)
        .with_context(|| format!("could not create the cache directory {}", root.display()))?;
    // Installs the lab's packages when missing (they are inputs of the hash).
    deps::ensure().context("setting up the system packages failed")?;

    let kernel = match recipe::kernel() {
        Ok(k) => k,
        Err(e) if util::is_root()? => {
            note(format!(
                "cannot find the kernel package ({e:#}); refreshing apt's lists"
            ));
            deps::apt_update()?;
            recipe::kernel()?
        }
        Err(e) => return Err(e),
    };
    let hash = recipe_hash(&kernel)?;
    let guest = Guest::at(root.join(&hash));
    if !force && guest.is_complete() {
        util::set_current(&root, &hash)?;
        return Ok(guest);
    }

    let _lock = util::lock_cache(&root, "another `cargo xtask lab build` is running")?;
    if !force && guest.is_complete() {
        util::set_current(&root, &hash)?;
        return Ok(guest);
    }
    build(&root, &hash, &kernel)?;
    util::set_current(&root, &hash)?;
    Ok(guest)
}

/// The recipe hash (16 hex digits).
fn recipe_hash(kernel: &recipe::Kernel) -> Result<String> {
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.as_bytes());
    h.update(b"\0kernel\0");
    h.update(kernel.package.as_bytes());
    h.update(b"=");
    h.update(kernel.version.as_bytes());
    for (name, text) in [
        ("recipe.rs", include_str!("recipe.rs")),
        ("cpio.rs", include_str!("cpio.rs")),
        ("kmod.rs", include_str!("kmod.rs")),
        ("ldd.rs", include_str!("ldd.rs")),
        ("httpd.conf", include_str!("guest/httpd.conf")),
    ] {
        h.update(b"\0file\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(text.as_bytes());
    }
    for (path, mode, text) in recipe::GUEST_FILES {
        h.update(format!("\0guest\0{path}\0{mode:o}\0").as_bytes());
        h.update(text.as_bytes());
    }
    for path in recipe::host_inputs()? {
        let meta =
            fs::metadata(&path).with_context(|| format!("could not stat {}", path.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        h.update(format!("\0host\0{}\0{}\0{mtime}", path.display(), meta.len()).as_bytes());
    }
    let digest = h.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

fn build(root: &Path, hash: &str, kernel: &recipe::Kernel) -> Result<()> {
    let started = Instant::now();
    let mut b = util::CacheBuild::start(root, hash)?;
    note(format!(
        "building the lab guest (recipe {hash}, kernel {} {}); about a minute",
        kernel.package, kernel.version
    ));
    note(format!("build log: {}", b.log_path.display()));

    let built = recipe::build(&b.work, &b.out, kernel, &mut b.log).map_err(|e| {
        anyhow!(
            "{e:#}\nThe lab guest build failed; its output is in {} (the work directory {} is removed by the next attempt).",
            b.log_path.display(),
            b.work.display()
        )
    })?;
    let elapsed = started.elapsed();
    b.finish(&[
        (MANIFEST, &manifest_json(hash, &built, elapsed)),
        (MARKER, &format!("{}\n", util::utc_now())),
    ])?;
    note(format!(
        "lab guest built in {}: initramfs {:.1} MiB ({:.1} MiB uncompressed, {} entries), kernel {}",
        util::human_duration(elapsed),
        built.initramfs_bytes as f64 / 1048576.0,
        built.initramfs_uncompressed_bytes as f64 / 1048576.0,
        built.initramfs_entries,
        built.kernel.release
    ));
    Ok(())
}

fn manifest_json(hash: &str, b: &recipe::Built, elapsed: Duration) -> String {
    use util::json_str as j;
    let programs: Vec<String> = recipe::PROGRAMS
        .iter()
        .map(|p| {
            let v = deps::installed_version(p.package).unwrap_or_else(|| "unknown".into());
            format!(
                "    {{\"path\": {}, \"package\": {}, \"version\": {}}}",
                j(p.path),
                j(p.package),
                j(&v)
            )
        })
        .collect();
    let modules: Vec<String> = b.modules.iter().map(|m| j(m)).collect();
    let host_kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{{\n  \"recipe_hash\": {},\n  \"kernel\": {{\"package\": {}, \"version\": {}, \"release\": {}}},\n  \"modules\": [\n    {}\n  ],\n  \"programs\": [\n{}\n  ],\n  \"initramfs_bytes\": {},\n  \"initramfs_uncompressed_bytes\": {},\n  \"initramfs_entries\": {},\n  \"disk_mib\": {},\n  \"admin_user\": {},\n  \"admin_password\": {},\n  \"built_at\": {},\n  \"build_seconds\": {},\n  \"build_host_kernel\": {}\n}}\n",
        j(hash),
        j(&b.kernel.package),
        j(&b.kernel.version),
        j(&b.kernel.release),
        modules.join(",\n    "),
        programs.join(",\n"),
        b.initramfs_bytes,
        b.initramfs_uncompressed_bytes,
        b.initramfs_entries,
        recipe::DISK_MIB,
        j(recipe::ADMIN_USER),
        j(recipe::ADMIN_PASSWORD),
        j(&util::utc_now()),
        elapsed.as_secs(),
        j(host_kernel.trim()),
    )
}

struct BootArgs {
    scenario: String,
    seconds: u64,
    timeout: u64,
    accel: vm::Accel,
    qemu: qemu::Variant,
    memory: u32,
    seed: u64,
    network: bool,
    console_log: Option<PathBuf>,
    kernel_args: Vec<String>,
}

fn boot(a: &BootArgs) -> Result<()> {
    let scenario = scenario::find(&a.scenario)?;
    let mut session = record::Session::start(&record::SessionOpts {
        scenario,
        vms: 1,
        seed: a.seed,
        qemu: a.qemu,
        accel: a.accel,
        memory_mib: a.memory,
        boot_timeout: Duration::from_secs(a.timeout),
        duration: Duration::from_secs(a.seconds + 5),
        kernel_args: a.kernel_args.clone(),
        network: a.network,
        phased: false,
    })?;
    println!(
        "VM `lab-{}` ready: QEMU pid {}, boot-to-ready {:.1}s ({}{})",
        scenario.name,
        session.pids()[0],
        session.boot_seconds[0],
        a.accel.as_str(),
        session
            .net_name()
            .map(|n| format!(", {} in namespace {n}", net::vm_ip(0)))
            .unwrap_or_default()
    );
    note(format!("keeping it running for {}s", a.seconds));
    let result = session.vms_mut()[0].hold(Duration::from_secs(a.seconds));
    if let Some(dest) = &a.console_log {
        if let Err(e) = fs::copy(session.vms_mut()[0].console_log(), dest) {
            note(format!(
                "could not keep the console log in {}: {e}",
                dest.display()
            ));
        }
    }
    result?;
    // On an error above, dropping the session stops everything.
    session.finish().map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn recipe_hash_covers_the_scenarios() {
        // init.sh (the guest side of every scenario) is one of the guest files.
        assert!(super::recipe::GUEST_FILES
            .iter()
            .any(|(path, _, text)| *path == "init" && text.contains("portscan-source")));
    }
}
