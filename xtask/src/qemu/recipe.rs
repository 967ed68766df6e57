//! The QEMU build recipe: everything that decides what the built QEMU is.
//!
//! The text of this file is part of the recipe hash (see `mod.rs`), so any change
//! here — a flag, a step, a firmware file — makes `cargo xtask qemu` rebuild. Code
//! that does not change the result (caching, verification, messages) lives in
//! `mod.rs` instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, note, Echo};

/// Debian source package (bookworm ships QEMU 7.2).
pub const SOURCE_PACKAGE: &str = "qemu";

/// `configure` flags, apart from `--prefix` and `--with-pkgversion` (see
/// [`configure_args`]).
pub const CONFIGURE_FLAGS: &[&str] = &[
    "--target-list=x86_64-softmmu",
    // USDT probes (dtrace) in every trace point, plus LTTng-UST as in the paper.
    "--enable-trace-backends=dtrace,ust",
    "--disable-docs",
    "--disable-werror",
    // No DWARF: faster build, smaller binary; the symbol table is kept (no strip).
    "--disable-debug-info",
    // Debian's source has the prebuilt firmware removed; firmware comes from the
    // Debian packages instead (see FIRMWARE_DIRS).
    "--disable-install-blobs",
    // The unpacked source is not a git checkout.
    "--with-git-submodules=ignore",
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
    // the machine (they were found on a developer machine) and the lab does not use:
    // off, so that the build depends only on the packages of xtask/packages.txt.
    "--disable-gnutls",
    "--disable-nettle",
    "--disable-gcrypt",
    "--disable-curses",
    "--disable-png",
    "--disable-vnc-jpeg",
    "--disable-bpf",
    "--disable-bzip2",
];

/// A `sys/sdt.h` that QEMU's generated dtrace headers find before the system's
/// (see [`write_sdt_wrapper`]): it makes every USDT site a 5-byte nop
/// (`nopl 0x0(%rax,%rax,1)`, the kernel's `x86_nops[5]`) instead of the 1-byte
/// `nop` of systemtap's header. Linux ≥ 6.18 "optimizes" a uprobe on such a site:
/// after the first hit it rewrites the nop into a call to a trampoline that enters
/// the kernel with the `uprobe` syscall, which costs less than the int3 trap and
/// exception path of a 1-byte site (see docs/PERFORMANCE.md). Older kernels, gdb,
/// bpftrace and systemtap treat the site like any other: the note format, the
/// address and the argument operands do not change.
pub const SDT_NOP5_HEADER: &str = "\
/* vmwatch: USDT sites as 5-byte nops, for Linux's optimized uprobes. */
#include_next <sys/sdt.h>
#undef _SDT_NOP
#define _SDT_NOP .byte 0x0f; .byte 0x1f; .byte 0x44; .byte 0x00; .byte 0x00
";

/// Binaries built and installed into `<prefix>/bin`.
pub const BINARIES: &[&str] = &["qemu-system-x86_64", "qemu-img"];

/// Where Debian's firmware packages put the files QEMU loads from its data dir:
/// (directory, package). Every regular file (symlinks followed) at the top of each
/// directory is copied into `<prefix>/share/qemu` unless the build installed a file
/// of that name itself.
pub const FIRMWARE_DIRS: &[(&str, &str)] = &[
    ("/usr/share/seabios", "seabios"),
    ("/usr/lib/ipxe/qemu", "ipxe-qemu"),
    ("/usr/share/qemu", "qemu-system-data"),
];

/// Files the x86 `pc`/`q35` machines load with default devices, checked after the
/// copy (with the package that provides each).
pub const REQUIRED_FIRMWARE: &[(&str, &str)] = &[
    ("bios-256k.bin", "seabios"),
    ("vgabios-stdvga.bin", "seabios"),
    ("efi-e1000.rom", "ipxe-qemu"),
    ("efi-virtio.rom", "ipxe-qemu"),
    ("kvmvapic.bin", "qemu-system-data"),
    ("linuxboot_dma.bin", "qemu-system-data"),
];

/// The full `configure` command line (without the program name). `sdt_include`
/// is the directory [`write_sdt_wrapper`] writes into.
pub fn configure_args(prefix: &Path, source_version: &str, sdt_include: &Path) -> Vec<String> {
    let mut args = vec![
        format!("--prefix={}", prefix.display()),
        format!("--with-pkgversion=vmwatch, Debian {source_version}"),
        format!("--extra-cflags=-I{}", sdt_include.display()),
    ];
    args.extend(CONFIGURE_FLAGS.iter().map(|s| s.to_string()));
    args
}

/// Writes [`SDT_NOP5_HEADER`] as `<dir>/sys/sdt.h`.
pub fn write_sdt_wrapper(dir: &Path) -> Result<()> {
    let sys = dir.join("sys");
    fs::create_dir_all(&sys).with_context(|| format!("could not create {}", sys.display()))?;
    let path = sys.join("sdt.h");
    fs::write(&path, SDT_NOP5_HEADER).with_context(|| format!("could not write {}", path.display()))
}

/// Downloads and unpacks the source package into `dir`; returns the source tree.
pub fn fetch_source(dir: &Path, source_version: &str, log: &mut fs::File) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .current_dir(dir)
        .args(["-q", "source"])
        // Root downloads into a directory the _apt sandbox user may not read.
        .args(["-o", "APT::Sandbox::User=root"])
        .arg(format!("{SOURCE_PACKAGE}={source_version}"));
    util::run_logged(&mut cmd, log, Echo::All).with_context(|| {
        format!("could not fetch the Debian source package {SOURCE_PACKAGE} {source_version}")
    })?;
    // apt-get source unpacks into `<package>-<upstream version>/`.
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

/// Configures, compiles and installs into `out` (the future `<prefix>`), then adds
/// the firmware.
pub fn build(
    src: &Path,
    build_dir: &Path,
    out: &Path,
    configure: &[String],
    jobs: Option<usize>,
    log: &mut fs::File,
) -> Result<()> {
    fs::create_dir_all(build_dir)
        .with_context(|| format!("could not create {}", build_dir.display()))?;

    note("configuring QEMU");
    let mut cmd = Command::new(src.join("configure"));
    cmd.current_dir(build_dir).args(configure);
    util::run_logged(&mut cmd, log, Echo::All).context("QEMU's configure failed")?;

    note(format!(
        "compiling {} (progress below; full output in the build log)",
        BINARIES.join(", ")
    ));
    let mut cmd = Command::new("ninja");
    cmd.arg("-C").arg(build_dir);
    if let Some(j) = jobs {
        cmd.arg(format!("-j{j}"));
    }
    cmd.args(BINARIES);
    util::run_logged(&mut cmd, log, Echo::NinjaProgress).context("compiling QEMU failed")?;

    install(src, build_dir, out)?;
    install_firmware(&out.join("share/qemu"))
}

/// Installs the binaries and the data files QEMU reads at run time (keymaps and
/// the trace event list). `meson install` is not used: it would build and install
/// everything (tests, tools, guest agent) that the lab does not need.
fn install(src: &Path, build_dir: &Path, out: &Path) -> Result<()> {
    let bin = out.join("bin");
    let data = out.join("share/qemu");
    for dir in [&bin, &data] {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    for name in BINARIES {
        let from = build_dir.join(name);
        let to = bin.join(name);
        fs::copy(&from, &to)
            .with_context(|| format!("could not install {} to {}", from.display(), to.display()))?;
    }
    let events = build_dir.join("trace/trace-events-all");
    if events.is_file() {
        fs::copy(&events, data.join("trace-events-all"))
            .with_context(|| format!("could not install {}", events.display()))?;
    }
    let keymaps = src.join("pc-bios/keymaps");
    let keymaps_out = data.join("keymaps");
    fs::create_dir_all(&keymaps_out)
        .with_context(|| format!("could not create {}", keymaps_out.display()))?;
    for entry in
        fs::read_dir(&keymaps).with_context(|| format!("could not list {}", keymaps.display()))?
    {
        let entry = entry.with_context(|| format!("could not list {}", keymaps.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        // Keymap files have no extension; skip meson.build and the like.
        if path.is_file() && path.extension().is_none() {
            fs::copy(&path, keymaps_out.join(&name))
                .with_context(|| format!("could not install {}", path.display()))?;
        }
    }
    Ok(())
}

/// Copies firmware from the Debian packages into `data` (the build's share/qemu),
/// where the relocatable QEMU finds it without `-L`.
fn install_firmware(data: &Path) -> Result<()> {
    let mut copied = 0;
    for (dir, package) in FIRMWARE_DIRS {
        let entries = fs::read_dir(dir).with_context(|| {
            format!("could not list {dir}; is the Debian package {package} installed?")
        })?;
        for entry in entries {
            let entry = entry.with_context(|| format!("could not list {dir}"))?;
            let path = entry.path();
            let to = data.join(entry.file_name());
            // `is_file` follows symlinks; dangling links and directories are skipped.
            if !path.is_file() || to.exists() {
                continue;
            }
            fs::copy(&path, &to).with_context(|| {
                format!(
                    "could not copy firmware {} to {}",
                    path.display(),
                    to.display()
                )
            })?;
            copied += 1;
        }
    }
    for (name, package) in REQUIRED_FIRMWARE {
        if !data.join(name).is_file() {
            bail!(
                "firmware file {name} is missing from {} after the copy; install the Debian package {package}",
                data.display()
            );
        }
    }
    note(format!(
        "copied {copied} firmware files into {}",
        data.display()
    ));
    Ok(())
}
