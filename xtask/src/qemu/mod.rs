//! `cargo xtask qemu`: QEMU from Debian's source packages, built with the `dtrace`
//! trace backend (USDT probes), cached outside the repository. Three builds
//! ([`Variant`]): `lab-10.0` (QEMU 10.0, `dtrace,ust`, 5-byte-nop sites; the
//! default, the lab's QEMU), `lab-7.2` (bookworm's QEMU 7.2, the same trace
//! set-up; what data/ was recorded on before the lab moved) and `stock-10.0`
//! (QEMU 10.0 with the `dtrace` backend and systemtap's 1-byte-nop sites, as
//! Fedora and RHEL build it).
//!
//! Cache layout (`<cache>` is `util::cache_dir()`):
//!
//! ```text
//! <cache>/qemu/<hash>/install/bin/qemu-system-x86_64   the binary
//! <cache>/qemu/<hash>/install/share/qemu/              firmware, keymaps
//! <cache>/qemu/<hash>/BUILD-INFO.json                  what was built, how, probe counts
//! <cache>/qemu/<hash>/build.log                        full build output
//! <cache>/qemu/<hash>/COMPLETE                         written last: the build is good
//! <cache>/qemu/<build> -> <hash>                       the latest good build of each
//!                                                      variant (`lab-7.2`, …)
//! <cache>/qemu/current -> <hash>                       the latest good default build
//! <cache>/qemu/.work-<hash>/                           a build in progress (or an
//!                                                      interrupted one, removed on retry)
//! <cache>/qemu/apt-10.0/                               apt's private index of the
//!                                                      10.0 sources (`apt_index`)
//! ```
//!
//! `<hash>` covers the recipe, the source package version and the packages the
//! build needs. For `lab-7.2` that is exactly what it was before the 10.0 builds
//! came (the text of `recipe.rs`, its flags, the version, the `qemu` section of
//! `xtask/packages.txt`: [`recipe_hash`], unchanged), so its cache stays valid;
//! the 10.0 builds add the text of `recipe_10.rs`, the variant and the `qemu10`
//! section ([`recipe_hash_10`]). A build is assembled in `.work-<hash>/out`,
//! verified there, marked COMPLETE and only then renamed to `<hash>`: an
//! interrupted build never looks complete.

mod apt_index;
pub mod probes;
mod recipe;
mod recipe_10;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

pub use probes::{count_probes, ProbeCounts};
pub use recipe_10::Flavour;

use crate::deps;
use crate::util::{self, note};

/// The DESIGN counts 2,991 probe names for QEMU 7.2 with `dtrace,ust`; fewer than
/// this means the build lost trace points (a backend or subsystems missing).
pub const MIN_PROBE_NAMES: usize = 2_900;

/// QEMU 10.0.13 with this project's configuration has 3,487 probe names
/// (docs/QEMU.md); fewer than this means trace points were lost.
pub const MIN_PROBE_NAMES_10: usize = 3_300;

/// Bumped when the cache layout changes incompatibly.
const LAYOUT_VERSION: &str = "vmwatch-qemu-cache-1";

const MARKER: &str = "COMPLETE";
const MANIFEST: &str = "BUILD-INFO.json";
const BINARY: &str = "qemu-system-x86_64";

/// How long the SeaBIOS check may wait for the banner (TCG on a busy machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);

/// Which QEMU `cargo xtask qemu` builds. Each has its own cache directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Variant {
    /// QEMU 10.0 (Debian trixie / bookworm-backports), `dtrace,ust` trace
    /// backends, 5-byte-nop probe sites: the lab's QEMU (the default).
    #[default]
    #[value(name = "lab-10.0")]
    Lab100,
    /// QEMU 7.2 (Debian bookworm) built like lab-10.0: `dtrace,ust`, 5-byte-nop
    /// probe sites (the lab's QEMU until data/ is re-recorded on 10.0).
    #[value(name = "lab-7.2")]
    Lab72,
    /// QEMU 10.0 as Fedora and RHEL build it: the `dtrace` backend alone and
    /// systemtap's sys/sdt.h (1-byte-nop probe sites, always an int3 trap).
    #[value(name = "stock-10.0")]
    Stock100,
}

impl Variant {
    /// Every variant, the default first.
    pub const ALL: [Variant; 3] = [Variant::Lab100, Variant::Lab72, Variant::Stock100];

    /// The name on the command line and in the cache (`lab-7.2`, …).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Lab72 => "lab-7.2",
            Variant::Lab100 => "lab-10.0",
            Variant::Stock100 => "stock-10.0",
        }
    }

    /// The upstream series whose newest Debian version is built.
    pub fn series(self) -> &'static str {
        match self {
            Variant::Lab72 => "7.2",
            Variant::Lab100 | Variant::Stock100 => recipe_10::SERIES,
        }
    }

    pub fn flavour(self) -> Flavour {
        match self {
            Variant::Lab72 | Variant::Lab100 => Flavour::Lab,
            Variant::Stock100 => Flavour::Stock,
        }
    }

    /// Fewer distinct `qemu` probe names than this fails the build.
    pub fn min_probe_names(self) -> usize {
        match self {
            Variant::Lab72 => MIN_PROBE_NAMES,
            Variant::Lab100 | Variant::Stock100 => MIN_PROBE_NAMES_10,
        }
    }

    /// The private apt index the source comes from (`None`: the system's).
    fn apt_index(self, root: &Path) -> Option<apt_index::Index> {
        match self {
            Variant::Lab72 => None,
            Variant::Lab100 | Variant::Stock100 => Some(apt_index::Index::new(root)),
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Lab => "lab",
            Flavour::Stock => "stock",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Which build.
    pub variant: Variant,
    /// Parallel compile jobs (ninja's default when unset).
    pub jobs: Option<usize>,
    /// Rebuild even if a complete build for the recipe exists.
    pub force: bool,
}

/// A complete build.
pub struct Build {
    pub variant: Variant,
    pub dir: PathBuf,
    pub binary: PathBuf,
}

/// Returns the cached build of `opts.variant` for its current recipe, building it
/// first if needed.
pub fn ensure(opts: &Options) -> Result<Build> {
    let variant = opts.variant;
    let root = util::cache_dir()?.join("qemu");
    fs::create_dir_all(&root)
        .with_context(|| format!("could not create the cache directory {}", root.display()))?;
    let index = variant.apt_index(&root);
    let packages = deps::read_packages()?;

    // Fast path: the source version comes from apt's local lists, no network.
    let mut index_updated = false;
    let version = match source_version(variant, index.as_ref()) {
        Ok(v) => v,
        Err(e) => {
            note(format!(
                "cannot tell the qemu {} source version yet ({e:#}); setting up apt first",
                variant.series()
            ));
            deps::ensure()?;
            if let Some(index) = &index {
                index.update()?;
                index_updated = true;
            }
            source_version(variant, index.as_ref())?
        }
    };
    let hash = variant_hash(variant, &version, &packages);
    let dir = root.join(&hash);
    if !opts.force && is_complete(&dir) {
        set_links(&root, variant, &hash)?;
        return Ok(complete_build(variant, dir));
    }

    // Slow path: make sure packages and package lists are current, so the source we
    // hash is the one apt can download.
    let outcome = deps::ensure()?;
    match &index {
        None if !outcome.updated && util::is_root()? => deps::apt_update()?,
        None => {}
        Some(_) if index_updated => {}
        Some(index) => index.update()?,
    }
    let version = source_version(variant, index.as_ref())?;
    let hash = variant_hash(variant, &version, &packages);
    let dir = root.join(&hash);

    let _lock = util::lock_cache(&root, "another `cargo xtask qemu` is building")?;
    if !opts.force && is_complete(&dir) {
        set_links(&root, variant, &hash)?;
        return Ok(complete_build(variant, dir));
    }
    build(&root, &hash, &version, index.as_ref(), opts)?;
    set_links(&root, variant, &hash)?;
    Ok(complete_build(variant, dir))
}

/// Points `<root>/<variant>` (and, for the default variant, `<root>/current`) at
/// `hash`.
fn set_links(root: &Path, variant: Variant, hash: &str) -> Result<()> {
    if variant == Variant::default() {
        util::set_current(root, hash)?;
    }
    util::set_link(root, variant.name(), hash)
}

fn complete_build(variant: Variant, dir: PathBuf) -> Build {
    let binary = dir.join("install/bin").join(BINARY);
    Build {
        variant,
        dir,
        binary,
    }
}

/// The cache key of `variant` built from `source_version`.
fn variant_hash(variant: Variant, source_version: &str, packages: &deps::Packages) -> String {
    match variant {
        Variant::Lab72 => recipe_hash(source_version, &packages.qemu),
        Variant::Lab100 | Variant::Stock100 => {
            let all: Vec<String> = packages
                .qemu
                .iter()
                .chain(&packages.qemu10)
                .cloned()
                .collect();
            recipe_hash_10(variant, source_version, &all)
        }
    }
}

fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file() && dir.join("install/bin").join(BINARY).is_file()
}

/// The recipe hash (16 hex digits).
fn recipe_hash(source_version: &str, qemu_packages: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.as_bytes());
    h.update(b"\0source\0");
    h.update(recipe::SOURCE_PACKAGE.as_bytes());
    h.update(b"=");
    h.update(source_version.as_bytes());
    h.update(b"\0configure\0");
    for flag in recipe::CONFIGURE_FLAGS {
        h.update(flag.as_bytes());
        h.update(b"\0");
    }
    h.update(b"\0packages\0");
    let sorted: BTreeSet<&String> = qemu_packages.iter().collect();
    for p in sorted {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.update(b"\0recipe.rs\0");
    h.update(include_str!("recipe.rs").as_bytes());
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The recipe hash of a 10.0 build (16 hex digits): like [`recipe_hash`], plus the
/// variant, meson's pinned version and the text of `recipe_10.rs`; `packages` are
/// the `qemu` and `qemu10` sections.
fn recipe_hash_10(variant: Variant, source_version: &str, packages: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(LAYOUT_VERSION.as_bytes());
    h.update(b"\0build\0");
    h.update(variant.name().as_bytes());
    h.update(b"\0source\0");
    h.update(recipe_10::SOURCE_PACKAGE.as_bytes());
    h.update(b"=");
    h.update(source_version.as_bytes());
    h.update(b"\0configure\0");
    for flag in variant
        .flavour()
        .flags()
        .iter()
        .chain(recipe_10::COMMON_FLAGS)
    {
        h.update(flag.as_bytes());
        h.update(b"\0");
    }
    h.update(b"\0meson\0");
    h.update(recipe_10::MESON_REQUIREMENT.as_bytes());
    h.update(b"\0packages\0");
    let sorted: BTreeSet<&String> = packages.iter().collect();
    for p in sorted {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    // The 10.0 builds reuse the steps of recipe.rs.
    h.update(b"\0recipe.rs\0");
    h.update(include_str!("recipe.rs").as_bytes());
    h.update(b"\0recipe_10.rs\0");
    h.update(include_str!("recipe_10.rs").as_bytes());
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The full version (with epoch) of the newest `qemu` source package of the
/// variant's series that apt knows (the system's lists for 7.2, the private index
/// for 10.0). Chosen explicitly: with several suites (bookworm and its security
/// updates, trixie, backports) `apt-get source qemu` would take the newest of any
/// series.
fn source_version(variant: Variant, index: Option<&apt_index::Index>) -> Result<String> {
    let pkg = recipe::SOURCE_PACKAGE;
    let mut cmd = Command::new("apt-cache");
    cmd.args(["showsrc", "--only-source", pkg]);
    if let Some(index) = index {
        index.configure(&mut cmd);
    }
    let showsrc = util::output(&mut cmd).with_context(|| {
        format!("could not read the source records of {pkg} (is a deb-src entry configured and `apt-get update` done?)")
    })?;
    let versions: Vec<&str> = showsrc
        .lines()
        .filter_map(|l| l.strip_prefix("Version:").map(str::trim))
        .collect();
    newest_of_series(&versions, variant.series())
        .map(str::to_string)
        .with_context(|| {
            format!(
                "apt knows no {pkg} source package of QEMU {} (versions known: {})",
                variant.series(),
                if versions.is_empty() {
                    "none".to_string()
                } else {
                    versions.join(", ")
                }
            )
        })
}

/// The newest of `versions` (Debian versions, with or without epoch) whose
/// upstream part is of `series` (`7.2` takes `1:7.2+dfsg-7`, not `1:7.20-1`).
fn newest_of_series<'a>(versions: &[&'a str], series: &str) -> Option<&'a str> {
    versions
        .iter()
        .copied()
        .filter(|v| {
            let upstream = v.split_once(':').map_or(*v, |(_, rest)| rest);
            upstream
                .strip_prefix(series)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .max_by(|a, b| apt_index::debian_version_cmp(a, b))
}

fn build(
    root: &Path,
    hash: &str,
    version: &str,
    index: Option<&apt_index::Index>,
    opts: &Options,
) -> Result<()> {
    let variant = opts.variant;
    let started = Instant::now();
    let mut b = util::CacheBuild::start(root, hash)?;
    let install = b.out.join("install");
    fs::create_dir_all(&install)
        .with_context(|| format!("could not create {}", install.display()))?;

    note(format!(
        "building QEMU {variant} from Debian source {} {version} (recipe {hash}); this takes {} on 2 cores",
        recipe::SOURCE_PACKAGE,
        match variant {
            Variant::Lab72 => "6-15 minutes",
            Variant::Lab100 | Variant::Stock100 => "10-20 minutes",
        }
    ));
    note(format!("build log: {}", b.log_path.display()));

    // The prefix is the final location; QEMU is relocatable, so it also runs from
    // the work directory for the checks below.
    let prefix = b.final_dir.join("install");
    let sdt_include = b.work.join("sdt-nop5");
    let venv = b.work.join("meson-venv");
    let configure = match variant {
        Variant::Lab72 => recipe::configure_args(&prefix, version, &sdt_include),
        Variant::Lab100 | Variant::Stock100 => recipe_10::configure_args(
            variant.flavour(),
            &prefix,
            version,
            &venv.join("bin/python3"),
            &sdt_include,
        ),
    };
    let result = (|| -> Result<(ProbeCounts, String, String)> {
        let build_dir = b.work.join("build");
        match (variant, index) {
            (Variant::Lab72, _) => {
                recipe::write_sdt_wrapper(&sdt_include)?;
                let src = recipe::fetch_source(&b.work.join("src"), version, &mut b.log)?;
                recipe::build(
                    &src, &build_dir, &install, &configure, opts.jobs, &mut b.log,
                )?;
            }
            (_, Some(index)) => {
                if variant.flavour() == Flavour::Lab {
                    recipe::write_sdt_wrapper(&sdt_include)?;
                }
                let src = recipe_10::fetch_source(
                    &b.work.join("src"),
                    version,
                    &index.config_file(),
                    &mut b.log,
                )?;
                // configure's --python= names this venv's interpreter.
                recipe_10::meson_venv(&venv, &mut b.log)?;
                recipe::build(
                    &src, &build_dir, &install, &configure, opts.jobs, &mut b.log,
                )?;
                recipe_10::install_extra(&build_dir, &install, &mut b.log)?;
            }
            (_, None) => bail!("the {variant} build has no apt index for its source"),
        }
        let binary = install.join("bin").join(BINARY);
        let qemu_version = qemu_version(&binary)?;
        let probes = count_probes(&binary)?;
        check_probes(variant, &probes)?;
        let banner = boot_seabios(&binary)?;
        Ok((probes, qemu_version, banner))
    })();
    let (probes, qemu_version, banner) = result.map_err(|e| {
        anyhow!(
            "{e:#}\nThe QEMU build failed; its full output is in {} (the work directory {} is removed by the next attempt).",
            b.log_path.display(),
            b.work.display()
        )
    })?;
    note(format!("SeaBIOS boot check: {banner}"));

    let elapsed = started.elapsed();
    let manifest = manifest_json(&Manifest {
        variant,
        hash,
        version,
        configure: &configure,
        qemu_version: &qemu_version,
        probes: &probes,
        elapsed,
    });
    b.finish(&[
        (MANIFEST, &manifest),
        (MARKER, &format!("{}\n", util::utc_now())),
    ])?;
    note(format!(
        "QEMU {variant} built in {} ({} qemu probe names, {} sites)",
        util::human_duration(elapsed),
        probes.qemu_names,
        probes.qemu_sites
    ));
    Ok(())
}

/// `cargo xtask qemu --build OLD --diff NEW`: how the probe names of two builds
/// differ, and where the lab's features stand (packaging/features.txt, the agent's
/// defaults and what the demo selects; the demo's built-in list).
pub fn diff_report(old: &Build, new: &Build) -> Result<String> {
    let old_names = probes::qemu_probes(&old.binary)?;
    let new_names = probes::qemu_probes(&new.binary)?;
    let features_path = util::repo_root().join("packaging/features.txt");
    let packaged = vmwatch_core::features::read_feature_list(&features_path)
        .with_context(|| format!("could not read {}", features_path.display()))?
        .features;
    let builtin: Vec<String> = crate::demo::DEFAULT_FEATURES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut out = format!(
        "{}: {}\n{}: {}\n\n",
        old.variant,
        old.binary.display(),
        new.variant,
        new.binary.display()
    );
    out.push_str(&probes::report(
        old.variant.name(),
        new.variant.name(),
        &old_names,
        &new_names,
        &[
            (
                "packaging/features.txt (the agent's defaults, the demo's selection)".into(),
                packaged,
            ),
            (
                "the demo's built-in list (demo.rs DEFAULT_FEATURES)".into(),
                builtin,
            ),
        ],
    ));
    Ok(out)
}

fn qemu_version(binary: &Path) -> Result<String> {
    let out = util::output(Command::new(binary).arg("--version"))
        .with_context(|| format!("the built {} does not run", binary.display()))?;
    Ok(out.lines().next().unwrap_or("").trim().to_string())
}

fn check_probes(variant: Variant, p: &ProbeCounts) -> Result<()> {
    note(format!(
        "USDT probes: {} stapsdt sites, {} of provider qemu ({} 5-byte nops, {} 1-byte nops), {} distinct qemu probe names",
        p.sites, p.qemu_sites, p.nop5_sites, p.nop1_sites, p.qemu_names
    ));
    let min = variant.min_probe_names();
    if p.qemu_names < min {
        bail!(
            "the built QEMU {variant} has only {} distinct USDT probe names of provider qemu (at least {min} expected); the dtrace backend or part of QEMU is missing from the build",
            p.qemu_names
        );
    }
    let (want, kind) = match variant.flavour() {
        Flavour::Lab => (p.nop5_sites, "5-byte nops (the sdt-nop5 sys/sdt.h wrapper)"),
        Flavour::Stock => (p.nop1_sites, "1-byte nops (systemtap's sys/sdt.h)"),
    };
    if want != p.qemu_sites {
        bail!(
            "only {want} of the {} qemu probe sites of the built QEMU {variant} are {kind}",
            p.qemu_sites
        );
    }
    Ok(())
}

/// Boots the firmware under TCG (no `-L`, so the firmware must be found next to the
/// binary) and waits for SeaBIOS's banner on the serial console. Returns the banner.
pub fn boot_seabios(binary: &Path) -> Result<String> {
    let mut cmd = Command::new(binary);
    cmd.args(["-nographic", "-M", "pc", "-accel", "tcg", "-m", "128"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    note(format!(
        "$ {} (until SeaBIOS prints its banner)",
        util::display(&cmd)
    ));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut seen = Vec::new();
    let mut banner_at: Option<Instant> = None;
    let outcome = loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if banner_at.is_none() && text.contains("SeaBIOS") {
            banner_at = Some(Instant::now());
        }
        // After the banner, give the option ROMs a moment to show up in the output.
        if let Some(t) = banner_at {
            if text.contains("Booting from") || t.elapsed() > Duration::from_secs(3) {
                break Ok(());
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(anyhow!(
                "no SeaBIOS banner within {}s",
                BOOT_TIMEOUT.as_secs()
            ));
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if banner_at.is_some() {
                    break Ok(());
                }
                break Err(anyhow!("QEMU exited before SeaBIOS printed its banner"));
            }
        }
    };
    // Stop QEMU whatever happened; an already exited child is fine.
    let _ = child.kill();
    let status = child
        .wait()
        .context("could not wait for the QEMU boot check")?;
    for r in readers {
        let _ = r.join();
    }
    while let Ok(chunk) = rx.try_recv() {
        seen.extend_from_slice(&chunk);
    }
    let text = util::printable(&String::from_utf8_lossy(&seen));
    if let Err(e) = outcome {
        bail!(
            "the SeaBIOS boot check failed: {e} (QEMU {status}); its output was:\n{}",
            text.trim()
        );
    }
    if text.contains("could not load") || text.contains("failed to find romfile") {
        bail!(
            "the SeaBIOS boot check found missing firmware; QEMU's output was:\n{}",
            text.trim()
        );
    }
    let banner = text
        .lines()
        .find(|l| l.contains("SeaBIOS"))
        .unwrap_or("SeaBIOS")
        .trim()
        .to_string();
    Ok(banner)
}

/// What BUILD-INFO.json records.
struct Manifest<'a> {
    variant: Variant,
    hash: &'a str,
    version: &'a str,
    configure: &'a [String],
    qemu_version: &'a str,
    probes: &'a ProbeCounts,
    elapsed: Duration,
}

fn manifest_json(m: &Manifest) -> String {
    use util::json_str as j;
    let configure_list: Vec<String> = m.configure.iter().map(|a| j(a)).collect();
    let firmware: Vec<String> = recipe::FIRMWARE_DIRS
        .iter()
        .map(|(_, pkg)| {
            let v = deps::installed_version(pkg).unwrap_or_else(|| "unknown".into());
            format!("    {}: {}", j(pkg), j(&v))
        })
        .collect();
    let meson = match m.variant {
        Variant::Lab72 => deps::installed_version("meson")
            .map(|v| format!("Debian meson {v}"))
            .unwrap_or_else(|| "Debian meson".into()),
        Variant::Lab100 | Variant::Stock100 => {
            format!("PyPI {} (venv)", recipe_10::MESON_REQUIREMENT)
        }
    };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let p = m.probes;
    format!(
        "{{\n  \"build\": {},\n  \"flavour\": {},\n  \"recipe_hash\": {},\n  \"source_package\": {},\n  \"source_version\": {},\n  \"qemu_version\": {},\n  \"meson\": {},\n  \"configure\": [\n    {}\n  ],\n  \"binaries\": [{}],\n  \"built_at\": {},\n  \"build_seconds\": {},\n  \"build_host_kernel\": {},\n  \"probes\": {{\n    \"stapsdt_sites\": {},\n    \"qemu_sites\": {},\n    \"qemu_names\": {},\n    \"nop5_sites\": {},\n    \"nop1_sites\": {}\n  }},\n  \"firmware_packages\": {{\n{}\n  }}\n}}\n",
        j(m.variant.name()),
        j(m.variant.flavour().name()),
        j(m.hash),
        j(recipe::SOURCE_PACKAGE),
        j(m.version),
        j(m.qemu_version),
        j(&meson),
        configure_list.join(",\n    "),
        recipe::BINARIES
            .iter()
            .map(|b| j(b))
            .collect::<Vec<_>>()
            .join(", "),
        j(&util::utc_now()),
        m.elapsed.as_secs(),
        j(kernel.trim()),
        p.sites,
        p.qemu_sites,
        p.qemu_names,
        p.nop5_sites,
        p.nop1_sites,
        firmware.join(",\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash of today's lab-7.2 build (recipe.rs, its flags, the `qemu` section
    /// of xtask/packages.txt and Debian's 1:7.2+dfsg-7+deb12u18). If this fails,
    /// something changed the 7.2 cache key, and every machine rebuilds QEMU 7.2 (7
    /// minutes): revert it, or update the hash here (and docs/QEMU.md) on purpose.
    #[test]
    fn lab_7_2_hash_is_unchanged() {
        let packages = deps::read_packages().expect("xtask/packages.txt");
        let pk = deps::Packages {
            qemu10: vec!["anything".into()],
            ..packages
        };
        assert_eq!(
            variant_hash(Variant::Lab72, "1:7.2+dfsg-7+deb12u18", &pk),
            "1539c5eaefba1d5b",
            "the lab-7.2 recipe hash changed"
        );
    }

    #[test]
    fn hash_depends_on_inputs() {
        let a = recipe_hash("1:7.2+dfsg-7", &["meson".into()]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, recipe_hash("1:7.2+dfsg-7", &["meson".into()]));
        assert_ne!(a, recipe_hash("1:7.2+dfsg-8", &["meson".into()]));
        assert_ne!(a, recipe_hash("1:7.2+dfsg-7", &["ninja-build".into()]));
    }

    #[test]
    fn each_10_0_build_has_its_own_hash() {
        let v = "1:10.0.13+ds-0+deb13u1";
        let pk = vec!["meson".to_string(), "python3-venv".to_string()];
        let lab = recipe_hash_10(Variant::Lab100, v, &pk);
        let stock = recipe_hash_10(Variant::Stock100, v, &pk);
        assert_eq!(lab.len(), 16);
        assert_ne!(lab, stock);
        assert_ne!(lab, recipe_hash(v, &pk));
        assert_eq!(lab, recipe_hash_10(Variant::Lab100, v, &pk));
        assert_ne!(lab, recipe_hash_10(Variant::Lab100, "1:10.0.14+ds-0", &pk));
        assert_ne!(lab, recipe_hash_10(Variant::Lab100, v, &pk[..1]));
        // The order of the package list does not matter.
        let reversed: Vec<String> = pk.iter().rev().cloned().collect();
        assert_eq!(lab, recipe_hash_10(Variant::Lab100, v, &reversed));
    }

    #[test]
    fn newest_version_of_a_series() {
        let known = [
            "1:7.2+dfsg-7+deb12u18",
            "1:7.2+dfsg-7+deb12u15",
            "1:10.0.2+ds-2+deb13u1~bpo12+1",
            "1:10.0.13+ds-0+deb13u1",
            "1:10.0.2+ds-2+deb13u1",
        ];
        assert_eq!(
            newest_of_series(&known, "7.2"),
            Some("1:7.2+dfsg-7+deb12u18")
        );
        assert_eq!(
            newest_of_series(&known, "10.0"),
            Some("1:10.0.13+ds-0+deb13u1")
        );
        assert_eq!(newest_of_series(&known, "10.1"), None);
        assert_eq!(newest_of_series(&["1:7.20-1"], "7.2"), None);
        assert_eq!(newest_of_series(&["7.2-1"], "7.2"), Some("7.2-1"));
    }

    #[test]
    fn variants() {
        assert_eq!(Variant::default(), Variant::Lab100);
        assert_eq!(Variant::ALL[0], Variant::default());
        for v in Variant::ALL {
            let parsed = <Variant as clap::ValueEnum>::from_str(v.name(), false);
            assert_eq!(parsed, Ok(v));
        }
        assert_eq!(Variant::Stock100.flavour(), Flavour::Stock);
        assert_eq!(Variant::Lab100.series(), "10.0");
    }
}
