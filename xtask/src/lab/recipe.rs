//! The guest recipe: everything that decides what the lab guest is.
//!
//! The text of this file (with `cpio.rs`, `kmod.rs`, `ldd.rs` and the files under
//! `guest/`) is part of the recipe hash (see `mod.rs`), so any change here — a
//! program, a module, a file of the guest — makes `cargo xtask lab build` rebuild.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::cpio;
use super::kmod::ModulesDep;
use super::ldd;
use crate::util::{self, note, Echo};

/// Debian's kernel meta package; the guest gets the kernel it depends on.
pub const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

/// Kernel modules loaded by the guest's init (their dependencies are added from
/// `modules.dep`). Debian builds virtio, ext4 and the crc32c it needs as modules;
/// the 8250 serial console, TCP/IP and packet sockets are built in.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    // ext4 asks the crypto API for crc32c; the generic one works on any CPU model
    // (crc32c-intel needs SSE4.2, which TCG's default CPU lacks).
    "crc32c_generic",
    "ext4",
];

/// A host program copied into the guest with every shared library `ldd` lists.
pub struct Program {
    /// Path on the host, and in the guest.
    pub path: &'static str,
    /// The Debian package that provides it (for BUILD-INFO.json).
    pub package: &'static str,
    /// Arguments for the check run in a chroot of the guest tree: the program must
    /// start (its libraries resolve). Its exit status is not checked.
    pub check: &'static [&'static str],
}

pub const PROGRAMS: &[Program] = &[
    Program {
        path: "/bin/busybox",
        package: "busybox-static",
        check: &["true"],
    },
    Program {
        path: "/usr/bin/stress-ng",
        package: "stress-ng",
        check: &["--version"],
    },
    Program {
        path: "/usr/sbin/hping3",
        package: "hping3",
        check: &["--version"],
    },
    Program {
        path: "/usr/bin/nmap",
        package: "nmap",
        check: &["--version"],
    },
    Program {
        path: "/usr/bin/slowhttptest",
        package: "slowhttptest",
        check: &["-h"],
    },
    Program {
        path: "/usr/bin/ncrack",
        package: "ncrack",
        check: &["--version"],
    },
    // The database job of `cargo xtask bench overhead`.
    Program {
        path: "/usr/bin/sqlite3",
        package: "sqlite3",
        check: &["-version"],
    },
];

/// Data directories copied whole (recursively), minus the named subdirectories.
/// nmap's NSE scripts and libraries (13 MB) are left out: no scenario runs NSE.
pub const DATA_DIRS: &[(&str, &[&str])] = &[
    ("/usr/share/nmap", &["scripts", "nselib"]),
    ("/usr/share/ncrack", &[]),
];

/// Single host files copied as they are (netbase: protocol and service names).
pub const HOST_FILES: &[&str] = &["/etc/protocols", "/etc/services"];

/// The guest's files from this repository: (path in the guest, mode, contents).
pub const GUEST_FILES: &[(&str, u32, &str)] = &[
    ("init", 0o755, include_str!("guest/init.sh")),
    (
        "etc/vmwatch/cgi-lib.sh",
        0o644,
        include_str!("guest/cgi-lib.sh"),
    ),
    (
        "www/cgi-bin/search",
        0o755,
        include_str!("guest/cgi-bin/search"),
    ),
    (
        "www/cgi-bin/item",
        0o755,
        include_str!("guest/cgi-bin/item"),
    ),
    (
        "www/cgi-bin/order",
        0o755,
        include_str!("guest/cgi-bin/order"),
    ),
    (
        "www/cgi-bin/report",
        0o755,
        include_str!("guest/cgi-bin/report"),
    ),
];

/// busybox httpd's configuration; `@ADMIN_PASSWORD@` is replaced.
const HTTPD_CONF: &str = include_str!("guest/httpd.conf");

/// HTTP basic authentication on `/admin` (for the `bruteforce` scenarios). The
/// password is in none of ncrack's bundled lists, so a brute force never ends early.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "vmwatch-Lab-7q3x";

/// Items in the web shop's data store (`/data/store.txt`).
pub const STORE_ITEMS: u32 = 3_000;

/// Size of the virtio data disk (ext4, for `stress-hdd`).
pub const DISK_MIB: u64 = 64;
/// Fixed file system UUID, so that the disk image does not differ between builds
/// for no reason.
const DISK_UUID: &str = "5d1f0c4e-7a6b-4e0e-9a51-766d77617463";

/// The kernel of the guest: the package and the release (`uname -r`).
#[derive(Debug, Clone)]
pub struct Kernel {
    /// e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// e.g. `6.1.192-2`.
    pub version: String,
    /// e.g. `6.1.0-56-amd64`.
    pub release: String,
}

/// Asks apt (local package lists, no network) which kernel package
/// `linux-image-amd64` currently depends on, and its version.
pub fn kernel() -> Result<Kernel> {
    let depends = util::output(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))
        .with_context(|| format!("apt does not know {KERNEL_META_PACKAGE}"))?;
    let package = parse_kernel_depends(&depends).with_context(|| {
        format!("`apt-cache depends {KERNEL_META_PACKAGE}` names no linux-image-* package")
    })?;
    let show =
        util::output(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))
            .with_context(|| format!("apt does not know {package}"))?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("`apt-cache show {package}` gives no version"))?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_string();
    Ok(Kernel {
        package,
        version,
        release,
    })
}

/// `Depends: linux-image-6.1.0-56-amd64` → `linux-image-6.1.0-56-amd64`.
pub fn parse_kernel_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains('<'))
        .map(str::to_string)
}

/// Every host file the guest is made of (programs, their libraries, data files).
/// Their paths, sizes and modification times are part of the recipe hash: a
/// package upgrade changes them.
pub fn host_inputs() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for prog in PROGRAMS {
        let path = Path::new(prog.path);
        if !path.is_file() {
            bail!(
                "{} is missing; install the Debian package {} (`cargo xtask deps`)",
                prog.path,
                prog.package
            );
        }
        files.push(path.to_path_buf());
        for lib in ldd::libraries(path)? {
            if !files.contains(&lib) {
                files.push(lib);
            }
        }
    }
    for (dir, skip) in DATA_DIRS {
        walk_files(Path::new(dir), skip, &mut files)
            .with_context(|| format!("could not list {dir}"))?;
    }
    for f in HOST_FILES {
        files.push(PathBuf::from(f));
    }
    Ok(files)
}

fn walk_files(dir: &Path, skip: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("could not list {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("could not list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        if path.is_dir() {
            walk_files(&path, &[], out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// What [`build`] made, for BUILD-INFO.json.
pub struct Built {
    pub kernel: Kernel,
    pub modules: Vec<String>,
    pub initramfs_bytes: u64,
    pub initramfs_uncompressed_bytes: u64,
    pub initramfs_entries: usize,
}

/// Builds the guest into `out`: `vmlinuz`, `initramfs.cpio.gz`, `disk.raw`.
pub fn build(work: &Path, out: &Path, kernel: &Kernel, log: &mut fs::File) -> Result<Built> {
    let root = work.join("root");
    fs::create_dir_all(&root).with_context(|| format!("could not create {}", root.display()))?;

    // 1. The kernel package: vmlinuz, modules, modules.dep (depmod).
    let dl = work.join("download");
    fs::create_dir_all(&dl).with_context(|| format!("could not create {}", dl.display()))?;
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(&dl)
        .args(["-q", "download", "-o", "APT::Sandbox::User=root"])
        .arg(format!("{}={}", kernel.package, kernel.version));
    util::run_logged(&mut cmd, log, Echo::All)
        .with_context(|| format!("could not download {} {}", kernel.package, kernel.version))?;
    let deb = single_file(&dl, ".deb")?;
    let kroot = work.join("kernel");
    note(format!("unpacking {}", deb.display()));
    util::run_logged(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kroot),
        log,
        Echo::All,
    )?;
    let vmlinuz = kroot.join(format!("boot/vmlinuz-{}", kernel.release));
    copy(&vmlinuz, &out.join("vmlinuz"))?;
    copy(
        &kroot.join(format!("boot/config-{}", kernel.release)),
        &out.join(format!("config-{}", kernel.release)),
    )?;
    util::run_logged(
        Command::new("depmod")
            .arg("-b")
            .arg(&kroot)
            .arg(&kernel.release),
        log,
        Echo::All,
    )
    .context("depmod failed on the unpacked kernel package")?;
    let mods_dir = kroot.join("lib/modules").join(&kernel.release);
    let dep_text = fs::read_to_string(mods_dir.join("modules.dep"))
        .with_context(|| format!("depmod wrote no {}", mods_dir.join("modules.dep").display()))?;
    let modules = ModulesDep::parse(&dep_text)?.load_order(MODULES)?;
    let guest_mods = root.join("lib/modules").join(&kernel.release);
    for m in &modules {
        copy(&mods_dir.join(m), &guest_mods.join(m))?;
    }
    write(
        &root.join("etc/vmwatch/modules"),
        &format!("{}\n", modules.join("\n")),
        0o644,
    )?;
    note(format!(
        "kernel {} ({}), {} modules: {}",
        kernel.release,
        kernel.version,
        modules.len(),
        modules
            .iter()
            .map(|m| super::kmod::module_name(m))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // 2. The file system tree.
    for d in [
        "bin",
        "usr/bin",
        "usr/sbin",
        "lib64",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "mnt",
        "data",
        "www/static",
        "www/admin",
        "var",
    ] {
        fs::create_dir_all(root.join(d))
            .with_context(|| format!("could not create {}", root.join(d).display()))?;
    }
    symlink("bin", &root.join("sbin"))?;
    for prog in PROGRAMS {
        copy(Path::new(prog.path), &under(&root, Path::new(prog.path)))?;
        for lib in ldd::libraries(Path::new(prog.path))? {
            let to = under(&root, &lib);
            if !to.exists() {
                copy(&lib, &to)?;
            }
        }
    }
    let applets = util::output(Command::new(root.join("bin/busybox")).arg("--list"))
        .context("could not list the busybox applets")?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            symlink("busybox", &link)?;
        }
    }
    for (dir, skip) in DATA_DIRS {
        let mut files = Vec::new();
        walk_files(Path::new(dir), skip, &mut files)?;
        for f in files {
            copy(&f, &under(&root, &f))?;
        }
    }
    for f in HOST_FILES {
        copy(Path::new(f), &under(&root, Path::new(f)))?;
    }
    for (path, mode, text) in GUEST_FILES {
        write(&root.join(path), text, *mode)?;
    }
    write(
        &root.join("etc/httpd.conf"),
        &HTTPD_CONF.replace("@ADMIN_PASSWORD@", ADMIN_PASSWORD),
        0o600,
    )?;
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write(&root.join("etc/group"), "root:x:0:\n", 0o644)?;
    write(&root.join("data/store.txt"), &store(STORE_ITEMS), 0o644)?;
    write(&root.join("www/index.html"), &index_html(), 0o644)?;
    write(
        &root.join("www/admin/index.html"),
        "<html><body><h1>Shop administration</h1><p>Signed in.</p></body></html>\n",
        0o644,
    )?;
    for (name, kib) in [("small.html", 1), ("medium.html", 16), ("large.html", 256)] {
        write(
            &root.join("www/static").join(name),
            &filler_page(kib),
            0o644,
        )?;
    }

    // 3. Checks on the tree: init parses, every program starts.
    util::run_logged(
        Command::new(root.join("bin/busybox"))
            .args(["sh", "-n"])
            .arg(root.join("init")),
        log,
        Echo::All,
    )
    .context("the guest's /init has a syntax error")?;
    check_programs(&root, log)?;

    // 4. The initramfs.
    let initramfs = out.join("initramfs.cpio.gz");
    let (entries, uncompressed) = write_initramfs(&root, &initramfs)?;
    let initramfs_bytes = fs::metadata(&initramfs)
        .with_context(|| format!("could not stat {}", initramfs.display()))?
        .len();

    // 5. The data disk.
    make_disk(&out.join("disk.raw"), log)?;

    Ok(Built {
        kernel: kernel.clone(),
        modules,
        initramfs_bytes,
        initramfs_uncompressed_bytes: uncompressed,
        initramfs_entries: entries,
    })
}

/// Runs each program's check in a chroot of the guest tree (root only).
fn check_programs(root: &Path, log: &mut fs::File) -> Result<()> {
    if !util::is_root()? {
        note("not root: skipping the chroot check of the guest's programs");
        return Ok(());
    }
    for prog in PROGRAMS {
        let mut cmd = Command::new("chroot");
        cmd.arg(root)
            .arg(prog.path)
            .args(prog.check)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/bin");
        let shown = util::display(&cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not run `{shown}`"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        writeln!(log, "$ {shown}\n{text}").context("could not write the build log")?;
        // 126/127: the program or a library could not be loaded.
        if matches!(out.status.code(), Some(126 | 127) | None)
            || text.contains("error while loading shared libraries")
        {
            bail!(
                "{} does not start in the guest tree ({}): {}",
                prog.path,
                out.status,
                text.trim()
            );
        }
    }
    note(format!(
        "all {} programs start in a chroot of the guest tree",
        PROGRAMS.len()
    ));
    Ok(())
}

/// Writes the tree as a gzip-compressed newc cpio archive (plus the device nodes
/// the kernel needs before devtmpfs is mounted). Returns (entries, uncompressed size).
fn write_initramfs(root: &Path, dest: &Path) -> Result<(usize, u64)> {
    let file =
        fs::File::create(dest).with_context(|| format!("could not create {}", dest.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-n", "-6"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("could not start gzip")?;
    let stdin = gzip.stdin.take().context("gzip has no stdin")?;
    let mut counter = Counter {
        inner: BufWriter::with_capacity(1 << 20, stdin),
        bytes: 0,
    };
    let mut w = cpio::Writer::new(&mut counter);
    let mut entries = 0;
    let mut paths = Vec::new();
    walk_all(root, root, &mut paths)?;
    for rel in &paths {
        let path = root.join(rel);
        let name = rel.to_string_lossy();
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("could not stat {}", path.display()))?;
        let perm = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            w.entry(&name, perm, cpio::Kind::Dir)
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)
                .with_context(|| format!("could not read the link {}", path.display()))?;
            w.entry(&name, 0, cpio::Kind::Symlink(&target.to_string_lossy()))
        } else {
            let data =
                fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
            w.entry(&name, perm, cpio::Kind::File(&data))
        }
        .context("could not write to gzip")?;
        entries += 1;
    }
    for (name, perm, major, minor) in [("dev/console", 0o600, 5, 1), ("dev/null", 0o666, 1, 3)] {
        w.entry(name, perm, cpio::Kind::CharDev(major, minor))
            .context("could not write to gzip")?;
        entries += 1;
    }
    w.finish().context("could not write to gzip")?;
    counter.inner.flush().context("could not write to gzip")?;
    let bytes = counter.bytes;
    drop(counter);
    let status = gzip.wait().context("could not wait for gzip")?;
    if !status.success() {
        bail!("gzip failed ({status}) writing {}", dest.display());
    }
    Ok((entries, bytes))
}

struct Counter<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Every path under `root` (relative), sorted, each directory before its contents.
fn walk_all(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("could not list {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("could not list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let is_dir = entry
            .file_type()
            .with_context(|| format!("could not stat {}", path.display()))?
            .is_dir();
        out.push(rel);
        if is_dir {
            walk_all(root, &path, out)?;
        }
    }
    Ok(())
}

fn make_disk(path: &Path, log: &mut fs::File) -> Result<()> {
    let f =
        fs::File::create(path).with_context(|| format!("could not create {}", path.display()))?;
    f.set_len(DISK_MIB << 20)
        .with_context(|| format!("could not size {}", path.display()))?;
    drop(f);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-F", "-q", "-L", "vmwatch-data", "-U", DISK_UUID])
        .args(["-E", "root_owner=0:0"])
        .arg(path);
    util::run_logged(&mut cmd, log, Echo::All).context("could not make the data disk's file system")
}

/// The web shop's data store: `id|name|category|price|stock`, deterministic.
pub fn store(items: u32) -> String {
    const CATEGORIES: &[&str] = &[
        "books", "garden", "kitchen", "music", "office", "outdoor", "tools", "toys",
    ];
    const WORDS: &[&str] = &[
        "amber", "basic", "cedar", "delta", "ember", "frost", "grand", "harbor", "ivory",
        "juniper", "kilo", "lunar", "maple", "north", "opal", "prime", "quartz", "river", "solar",
        "timber",
    ];
    let mut state: u64 = 0x766d_7761_7463_6801;
    let mut next = move || {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = String::new();
    for id in 1..=items {
        let w1 = WORDS[(next() % WORDS.len() as u64) as usize];
        let w2 = WORDS[(next() % WORDS.len() as u64) as usize];
        let cat = CATEGORIES[(next() % CATEGORIES.len() as u64) as usize];
        let cents = 199 + next() % 20_000;
        let stock = next() % 500;
        out.push_str(&format!(
            "{id}|{w1}-{w2}|{cat}|{}.{:02}|{stock}\n",
            cents / 100,
            cents % 100
        ));
    }
    out
}

fn index_html() -> String {
    "<html><head><title>vmwatch lab shop</title></head><body>\n\
     <h1>vmwatch lab shop</h1>\n<ul>\n\
     <li><a href=\"/cgi-bin/search?q=tools\">search</a></li>\n\
     <li><a href=\"/cgi-bin/item?id=42\">item</a></li>\n\
     <li><a href=\"/cgi-bin/order?id=42&amp;qty=1\">order</a></li>\n\
     <li><a href=\"/cgi-bin/report\">report</a></li>\n\
     <li><a href=\"/static/small.html\">static pages</a></li>\n\
     <li><a href=\"/admin/\">administration</a> (basic auth)</li>\n\
     </ul></body></html>\n"
        .to_string()
}

fn filler_page(kib: usize) -> String {
    let mut s = String::from("<html><body><pre>\n");
    let mut i = 0;
    while s.len() < kib * 1024 {
        s.push_str(&format!(
            "line {i:06} of a static page served by the lab guest\n"
        ));
        i += 1;
    }
    s.push_str("</pre></body></html>\n");
    s
}

/// `root` + absolute `path`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("could not copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("could not write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not chmod {}", path.display()))
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("could not create the symlink {}", link.display()))
}

fn single_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("could not list {}", dir.display()))?
            .path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one *{suffix} file in {}, found {}",
            dir.display(),
            found.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_depends() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_depends(text).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_kernel_depends("linux-image-amd64\n"), None);
    }

    #[test]
    fn store_is_deterministic() {
        let a = store(100);
        assert_eq!(a, store(100));
        assert_eq!(a.lines().count(), 100);
        for line in a.lines() {
            let fields: Vec<&str> = line.split('|').collect();
            assert_eq!(fields.len(), 5, "{line}");
            assert!(fields[3].parse::<f64>().is_ok(), "{line}");
        }
        assert!(a.starts_with("1|"));
    }

    #[test]
    fn guest_files_parse() {
        // The init script and CGI scripts must be valid sh (busybox ash is close
        // enough to dash for `-n`).
        for (path, _, text) in GUEST_FILES {
            let out = Command::new("sh")
                .args(["-n", "-c", text])
                .output()
                .expect("sh runs");
            assert!(
                out.status.success(),
                "{path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
