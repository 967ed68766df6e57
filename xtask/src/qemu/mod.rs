//! `cargo xtask qemu`: QEMU 7.2 from Debian's source package, built with the
//! `dtrace,ust` trace backends, cached outside the repository.
//!
//! Cache layout (`<cache>` is `util::cache_dir()`):
//!
//! ```text
//! <cache>/qemu/<hash>/install/bin/qemu-system-x86_64   the binary
//! <cache>/qemu/<hash>/install/share/qemu/              firmware, keymaps
//! <cache>/qemu/<hash>/BUILD-INFO.json                  what was built, how, probe counts
//! <cache>/qemu/<hash>/build.log                        full build output
//! <cache>/qemu/<hash>/COMPLETE                         written last: the build is good
//! <cache>/qemu/current -> <hash>                       the latest good build
//! <cache>/qemu/.work-<hash>/                           a build in progress (or an
//!                                                      interrupted one, removed on retry)
//! ```
//!
//! `<hash>` covers the recipe (the text of `recipe.rs`: flags, steps, firmware), the
//! source package version and the `qemu` section of `xtask/packages.txt`. A build is
//! assembled in `.work-<hash>/out`, verified there, marked COMPLETE and only then
//! renamed to `<hash>`: an interrupted build never looks complete.

mod recipe;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::deps;
use crate::util::{self, note};

/// The DESIGN counts 2,991 probe names for QEMU 7.2 with `dtrace,ust`; fewer than
/// this means the build lost trace points (a backend or subsystems missing).
pub const MIN_PROBE_NAMES: usize = 2_900;

/// Bumped when the cache layout changes incompatibly.
const LAYOUT_VERSION: &str = "vmwatch-qemu-cache-1";

const MARKER: &str = "COMPLETE";
const MANIFEST: &str = "BUILD-INFO.json";
const BINARY: &str = "qemu-system-x86_64";

/// How long the SeaBIOS check may wait for the banner (TCG on a busy machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Parallel compile jobs (ninja's default when unset).
    pub jobs: Option<usize>,
    /// Rebuild even if a complete build for the recipe exists.
    pub force: bool,
}

/// A complete build.
pub struct Build {
    pub dir: PathBuf,
    pub binary: PathBuf,
}

/// USDT probe counts of a binary (from `readelf -n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounts {
    /// All `stapsdt` notes (call sites), any provider.
    pub sites: usize,
    /// Notes of provider `qemu`.
    pub qemu_sites: usize,
    /// Distinct probe names of provider `qemu`.
    pub qemu_names: usize,
}

/// Returns the cached build for the current recipe, building it first if needed.
pub fn ensure(opts: &Options) -> Result<Build> {
    let root = util::cache_dir()?.join("qemu");
    fs::create_dir_all(&root)
        .with_context(|| format!("could not create the cache directory {}", root.display()))?;

    // Fast path: the source version comes from apt's local lists, no network.
    let version = match source_version() {
        Ok(v) => v,
        Err(e) => {
            note(format!(
                "cannot tell the qemu source version yet ({e:#}); setting up apt first"
            ));
            deps::ensure()?;
            source_version()?
        }
    };
    let packages = deps::read_packages()?;
    let hash = recipe_hash(&version, &packages.qemu);
    let dir = root.join(&hash);
    if !opts.force && is_complete(&dir) {
        util::set_current(&root, &hash)?;
        return Ok(complete_build(dir));
    }

    // Slow path: make sure packages and package lists are current, so the source we
    // hash is the one apt can download.
    let outcome = deps::ensure()?;
    if !outcome.updated && util::is_root()? {
        deps::apt_update()?;
    }
    let version = source_version()?;
    let hash = recipe_hash(&version, &packages.qemu);
    let dir = root.join(&hash);

    let _lock = util::lock_cache(&root, "another `cargo xtask qemu` is building")?;
    if !opts.force && is_complete(&dir) {
        util::set_current(&root, &hash)?;
        return Ok(complete_build(dir));
    }
    build(&root, &hash, &version, opts)?;
    util::set_current(&root, &hash)?;
    Ok(complete_build(dir))
}

fn complete_build(dir: PathBuf) -> Build {
    let binary = dir.join("install/bin").join(BINARY);
    Build { dir, binary }
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

/// The full version (with epoch) of the source package `apt-get source` would fetch.
fn source_version() -> Result<String> {
    let pkg = recipe::SOURCE_PACKAGE;
    let uris = util::output(
        Command::new("apt-get")
            .args(["source", "--print-uris", "-o", "APT::Sandbox::User=root"])
            .arg(pkg),
    )
    .with_context(|| format!("apt cannot find the source package {pkg} (is a deb-src entry configured and `apt-get update` done?)"))?;
    let prefix = format!("{pkg}_");
    let dsc_version = uris
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix)?.strip_suffix(".dsc"))
        .next()
        .map(str::to_string)
        .with_context(|| format!("`apt-get source --print-uris {pkg}` names no .dsc file"))?;
    // The .dsc name lacks the epoch, which `apt-get source pkg=VERSION` needs.
    let showsrc = util::output(Command::new("apt-cache").args(["showsrc", "--only-source", pkg]))
        .with_context(|| format!("could not read the source records of {pkg}"))?;
    let full = showsrc
        .lines()
        .filter_map(|l| l.strip_prefix("Version:").map(str::trim))
        .find(|v| v.split_once(':').map_or(*v, |(_, rest)| rest) == dsc_version)
        .map(str::to_string);
    Ok(full.unwrap_or(dsc_version))
}

fn build(root: &Path, hash: &str, version: &str, opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut b = util::CacheBuild::start(root, hash)?;
    let install = b.out.join("install");
    fs::create_dir_all(&install)
        .with_context(|| format!("could not create {}", install.display()))?;

    note(format!(
        "building QEMU from Debian source {} {version} (recipe {hash}); this takes 6-15 minutes on 2 cores",
        recipe::SOURCE_PACKAGE
    ));
    note(format!("build log: {}", b.log_path.display()));

    // The prefix is the final location; QEMU is relocatable, so it also runs from
    // the work directory for the checks below.
    let sdt_include = b.work.join("sdt-nop5");
    let configure = recipe::configure_args(&b.final_dir.join("install"), version, &sdt_include);
    let result = (|| -> Result<(ProbeCounts, String, String)> {
        recipe::write_sdt_wrapper(&sdt_include)?;
        let src = recipe::fetch_source(&b.work.join("src"), version, &mut b.log)?;
        recipe::build(
            &src,
            &b.work.join("build"),
            &install,
            &configure,
            opts.jobs,
            &mut b.log,
        )?;
        let binary = install.join("bin").join(BINARY);
        let qemu_version = qemu_version(&binary)?;
        let probes = count_probes(&binary)?;
        check_probes(&probes)?;
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
    let manifest = manifest_json(hash, version, &configure, &qemu_version, &probes, elapsed);
    b.finish(&[
        (MANIFEST, &manifest),
        (MARKER, &format!("{}\n", util::utc_now())),
    ])?;
    note(format!(
        "QEMU built in {} ({} qemu probe names, {} sites)",
        util::human_duration(elapsed),
        probes.qemu_names,
        probes.qemu_sites
    ));
    Ok(())
}

fn qemu_version(binary: &Path) -> Result<String> {
    let out = util::output(Command::new(binary).arg("--version"))
        .with_context(|| format!("the built {} does not run", binary.display()))?;
    Ok(out.lines().next().unwrap_or("").trim().to_string())
}

/// Counts the USDT probes of `binary` with `readelf -n`.
pub fn count_probes(binary: &Path) -> Result<ProbeCounts> {
    let notes = util::output(Command::new("readelf").arg("-n").arg(binary))
        .with_context(|| format!("could not read the ELF notes of {}", binary.display()))?;
    Ok(parse_probe_notes(&notes))
}

fn parse_probe_notes(readelf: &str) -> ProbeCounts {
    let mut counts = ProbeCounts {
        sites: 0,
        qemu_sites: 0,
        qemu_names: 0,
    };
    let mut names = BTreeSet::new();
    let mut provider: Option<&str> = None;
    for line in readelf.lines() {
        let line = line.trim();
        if let Some(p) = line.strip_prefix("Provider:") {
            counts.sites += 1;
            provider = Some(p.trim());
        } else if let Some(name) = line.strip_prefix("Name:") {
            if provider == Some("qemu") {
                counts.qemu_sites += 1;
                names.insert(name.trim().to_string());
            }
            provider = None;
        }
    }
    counts.qemu_names = names.len();
    counts
}

fn check_probes(p: &ProbeCounts) -> Result<()> {
    note(format!(
        "USDT probes: {} stapsdt sites, {} of provider qemu, {} distinct qemu probe names",
        p.sites, p.qemu_sites, p.qemu_names
    ));
    if p.qemu_names < MIN_PROBE_NAMES {
        bail!(
            "the built QEMU has only {} distinct USDT probe names of provider qemu (at least {MIN_PROBE_NAMES} expected, about 2,991 for QEMU 7.2 with the dtrace,ust backends); the dtrace backend or part of QEMU is missing from the build",
            p.qemu_names
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

fn manifest_json(
    hash: &str,
    version: &str,
    configure: &[String],
    qemu_version: &str,
    probes: &ProbeCounts,
    elapsed: Duration,
) -> String {
    use util::json_str as j;
    let configure_list: Vec<String> = configure.iter().map(|a| j(a)).collect();
    let firmware: Vec<String> = recipe::FIRMWARE_DIRS
        .iter()
        .map(|(_, pkg)| {
            let v = deps::installed_version(pkg).unwrap_or_else(|| "unknown".into());
            format!("    {}: {}", j(pkg), j(&v))
        })
        .collect();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{{\n  \"recipe_hash\": {},\n  \"source_package\": {},\n  \"source_version\": {},\n  \"qemu_version\": {},\n  \"configure\": [\n    {}\n  ],\n  \"binaries\": [{}],\n  \"built_at\": {},\n  \"build_seconds\": {},\n  \"build_host_kernel\": {},\n  \"probes\": {{\n    \"stapsdt_sites\": {},\n    \"qemu_sites\": {},\n    \"qemu_names\": {}\n  }},\n  \"firmware_packages\": {{\n{}\n  }}\n}}\n",
        j(hash),
        j(recipe::SOURCE_PACKAGE),
        j(version),
        j(qemu_version),
        configure_list.join(",\n    "),
        recipe::BINARIES
            .iter()
            .map(|b| j(b))
            .collect::<Vec<_>>()
            .join(", "),
        j(&util::utc_now()),
        elapsed.as_secs(),
        j(kernel.trim()),
        probes.sites,
        probes.qemu_sites,
        probes.qemu_names,
        firmware.join(",\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_notes() {
        let text = "\
Displaying notes found in: .note.stapsdt
  Owner                Data size \tDescription
  stapsdt              0x00000040\tNT_STAPSDT (SystemTap probe descriptors)
    Provider: qemu
    Name: vhost_commit
    Location: 0x1, Base: 0x2, Semaphore: 0x3
    Arguments: 
  stapsdt              0x00000040\tNT_STAPSDT (SystemTap probe descriptors)
    Provider: qemu
    Name: vhost_commit
    Location: 0x5, Base: 0x2, Semaphore: 0x3
  stapsdt              0x00000040\tNT_STAPSDT (SystemTap probe descriptors)
    Provider: libc
    Name: setjmp
";
        assert_eq!(
            parse_probe_notes(text),
            ProbeCounts {
                sites: 3,
                qemu_sites: 2,
                qemu_names: 1
            }
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
}
