//! The QEMU 10.0 build recipes (`lab-10.0`, `stock-10.0`): everything that decides
//! what those builds are, on top of the shared steps of `recipe.rs`.
//!
//! The text of this file (and of `recipe.rs`, whose steps it reuses) is part of the
//! 10.0 recipe hashes (see `mod.rs`), so any change here rebuilds the 10.0 builds
//! only: the 7.2 build's hash covers `recipe.rs` alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, note, Echo};

/// Debian source package; its 10.0 versions come from trixie (Debian 13) and
/// bookworm-backports (see `apt_index`).
pub const SOURCE_PACKAGE: &str = "qemu";

/// The upstream series: the highest `1:10.0…` version apt knows is built.
pub const SERIES: &str = "10.0";

/// Debian's `+ds` tarball drops the meson wheel QEMU bundles, and QEMU 10.0 needs
/// meson >= 1.5 (bookworm has 1.0): this meson, from PyPI, is installed into a
/// virtual environment of the build's work directory, checked against its hash.
/// 1.5.0 is the version of the wheel upstream's 10.0 tarball ships
/// (`python/wheels/meson-1.5.0-py3-none-any.whl`, `pythondeps.toml`).
pub const MESON_REQUIREMENT: &str =
    "meson==1.5.0 --hash=sha256:52b34f4903b882df52ad0d533146d4b992c018ea77399f825579737672ae7b20";

/// The Python the meson virtual environment is made with (Debian's, not whatever
/// `python3` comes first in PATH).
pub const PYTHON: &str = "/usr/bin/python3";

/// What the lab build adds to [`COMMON_FLAGS`]: `dtrace,ust` as the 7.2 lab build
/// (LTTng-UST as in the paper); its sites are 5-byte nops (see [`configure_args`]).
pub const LAB_FLAGS: &[&str] = &["--enable-trace-backends=dtrace,ust"];

/// What the stock build adds: the trace backend exactly as Fedora's and RHEL's
/// `qemu.spec` configure it, and systemtap's own `sys/sdt.h` (1-byte nop sites).
pub const STOCK_FLAGS: &[&str] = &["--enable-trace-backends=dtrace"];

/// `configure` flags of both 10.0 builds, apart from `--prefix`,
/// `--with-pkgversion`, `--python` and the `sys/sdt.h` wrapper (see
/// [`configure_args`]). They follow `recipe::CONFIGURE_FLAGS` of 7.2; what changed
/// in 10.0 is marked.
pub const COMMON_FLAGS: &[&str] = &[
    "--target-list=x86_64-softmmu",
    "--disable-docs",
    "--disable-werror",
    // No DWARF: faster build, smaller binary; the symbol table is kept (no strip).
    "--disable-debug-info",
    // Debian's source has the prebuilt firmware removed; firmware comes from the
    // Debian packages instead (recipe::FIRMWARE_DIRS).
    "--disable-install-blobs",
    // 10.0: replaces 7.2's --with-git-submodules=ignore (gone). Nothing is fetched
    // while configuring: the subprojects the build needs (keycodemapdb,
    // berkeley-softfloat-3) are in Debian's tarball, and meson is the venv's.
    "--disable-download",
    // 10.0: the Rust devices are optional (off by default); said explicitly.
    "--disable-rust",
    // Features the lab relies on: fail at configure time if one is missing.
    "--enable-kvm",
    "--enable-tcg",
    "--enable-slirp",
    "--enable-fdt=system",
    "--enable-linux-aio",
    "--enable-linux-io-uring",
    "--enable-vhost-net",
    "--enable-cap-ng",
    "--enable-attr",
    // Optional libraries configure would pick up from whatever else is installed on
    // the machine and the lab does not use: off, as for 7.2.
    "--disable-gnutls",
    "--disable-nettle",
    "--disable-gcrypt",
    "--disable-curses",
    "--disable-png",
    "--disable-vnc-jpeg",
    "--disable-bpf",
    "--disable-bzip2",
];

/// The two 10.0 builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `dtrace,ust`, 5-byte-nop sites (the lab's recipe).
    Lab,
    /// `dtrace` alone, systemtap's 1-byte-nop sites (what Fedora and RHEL ship).
    Stock,
}

impl Flavour {
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Flavour::Lab => LAB_FLAGS,
            Flavour::Stock => STOCK_FLAGS,
        }
    }
}

/// The full `configure` command line (without the program name). `python` is the
/// venv's interpreter ([`meson_venv`]); `sdt_include` is where
/// `recipe::write_sdt_wrapper` writes the 5-byte-nop `sys/sdt.h` (lab only).
pub fn configure_args(
    flavour: Flavour,
    prefix: &Path,
    source_version: &str,
    python: &Path,
    sdt_include: &Path,
) -> Vec<String> {
    let mut args = vec![
        format!("--prefix={}", prefix.display()),
        format!("--with-pkgversion=vmwatch, Debian {source_version}"),
        // configure makes its own venv (build/pyvenv) from this interpreter; as the
        // interpreter is a venv's, mkvenv.py nests it and sees the parent's meson.
        format!("--python={}", python.display()),
    ];
    if flavour == Flavour::Lab {
        args.push(format!("--extra-cflags=-I{}", sdt_include.display()));
    }
    args.extend(flavour.flags().iter().map(|s| s.to_string()));
    args.extend(COMMON_FLAGS.iter().map(|s| s.to_string()));
    args
}

/// Creates the virtual environment `dir` with Debian's Python and installs
/// [`MESON_REQUIREMENT`] from PyPI into it; returns its interpreter.
pub fn meson_venv(dir: &Path, log: &mut fs::File) -> Result<PathBuf> {
    note(format!(
        "installing {} from PyPI into {}",
        MESON_REQUIREMENT
            .split_whitespace()
            .next()
            .unwrap_or("meson"),
        dir.display()
    ));
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-m", "venv"]).arg(dir);
    util::run_logged(&mut cmd, log, Echo::All).with_context(|| {
        format!(
            "could not create a Python virtual environment in {} (is python3-venv installed?)",
            dir.display()
        )
    })?;
    let requirements = dir.join("requirements.txt");
    fs::write(&requirements, format!("{MESON_REQUIREMENT}\n"))
        .with_context(|| format!("could not write {}", requirements.display()))?;
    let mut cmd = Command::new(dir.join("bin/pip"));
    cmd.args([
        "install",
        "--no-input",
        "--no-deps",
        "--require-hashes",
        "-r",
    ])
    .arg(&requirements);
    util::run_logged(&mut cmd, log, Echo::All)
        .context("could not install meson from PyPI into the build's virtual environment")?;
    Ok(dir.join("bin/python3"))
}

/// Downloads and unpacks the source package into `dir` with apt configured by
/// `apt_config` (the private index of `apt_index`); returns the source tree.
pub fn fetch_source(
    dir: &Path,
    source_version: &str,
    apt_config: &Path,
    log: &mut fs::File,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .env("APT_CONFIG", apt_config)
        .current_dir(dir)
        .args(["-q", "source"])
        .args(["-o", "APT::Sandbox::User=root"])
        .arg(format!("{SOURCE_PACKAGE}={source_version}"));
    util::run_logged(&mut cmd, log, Echo::All).with_context(|| {
        format!("could not fetch the Debian source package {SOURCE_PACKAGE} {source_version}")
    })?;
    let mut trees = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("could not list {}", dir.display()))?;
        if entry.path().join("configure").is_file() {
            trees.push(entry.path());
        }
    }
    match trees.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one unpacked source tree with a `configure` script in {}, found {}",
            dir.display(),
            trees.len()
        ),
    }
}

/// What 10.0 installs besides `recipe::build`'s files: the trace event list
/// (`share/qemu/trace-events-all`, every event the source declares), a ninja
/// target of its own that building the binaries does not make.
pub fn install_extra(build_dir: &Path, out: &Path, log: &mut fs::File) -> Result<()> {
    let mut cmd = Command::new("ninja");
    cmd.arg("-C").arg(build_dir).arg("trace/trace-events-all");
    util::run_logged(&mut cmd, log, Echo::All).context("generating trace-events-all failed")?;
    let events = build_dir.join("trace/trace-events-all");
    let to = out.join("share/qemu/trace-events-all");
    fs::copy(&events, &to).with_context(|| format!("could not install {}", events.display()))?;
    Ok(())
}
