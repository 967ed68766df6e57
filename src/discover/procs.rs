//! Host processes: finding QEMU processes, their VM names, UUIDs and
//! binaries, whether a QEMU-named process may be taken for a VM, and
//! telling whether a watched PID is still the same process.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

use crate::error::{Error, Result};

/// A process vmwatch can watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    /// VM name: `-name`; for QEMU without one, libvirt's domain name (its
    /// PID file, else its machine cgroup; see [`libvirt_name`]), else
    /// `qemu-PID`; for other processes, the command name.
    pub vm: String,
    /// `-uuid` (libvirt always passes the domain's), lower-case canonical
    /// form; `None` without one.
    pub uuid: Option<String>,
    /// Path of the executable as the kernel reports it.
    pub binary: PathBuf,
    /// Start time in clock ticks since boot (tells a reused PID apart).
    #[serde(skip)]
    pub start_time: u64,
    /// Device and inode of the executable: one attachment serves every
    /// process running the same file.
    #[serde(skip)]
    pub binary_id: (u64, u64),
    pub is_qemu: bool,
    /// Real and effective uid.
    #[serde(skip)]
    pub uids: (u32, u32),
    /// Owner and mode of the executable file.
    #[serde(skip)]
    pub exe_owner: u32,
    #[serde(skip)]
    pub exe_mode: u32,
}

/// Why a QEMU-named process found by name (`--vm`, `--all`) is not taken
/// for a VM: anyone can start a process called `qemu-system-*` with any
/// `-name`, so only root's and system accounts' processes running a binary
/// only root can change count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("run by uid {uid}, which is neither root nor a system account")]
    User { uid: u32 },
    #[error("its executable {} is owned by uid {uid}, not root", path.display())]
    ExeOwner { path: PathBuf, uid: u32 },
    #[error("its executable {} is writable by group or others (mode {mode:04o})", path.display())]
    ExeWritable { path: PathBuf, mode: u32 },
}

impl Process {
    /// Reads a process by PID.
    pub fn from_pid(pid: u32) -> Result<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let stat = fs::read_to_string(dir.join("stat")).map_err(|_| Error::NoSuchProcess(pid))?;
        let fields = stat_fields(&stat).ok_or(Error::NoSuchProcess(pid))?;
        // Neither has an executable: say what the PID is instead.
        if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
            return Err(Error::Zombie(pid));
        }
        let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
        if flags & PF_KTHREAD != 0 {
            return Err(Error::KernelThread(pid));
        }
        let start_time = parse_start_time(&stat).ok_or(Error::NoSuchProcess(pid))?;
        let status =
            fs::read_to_string(dir.join("status")).map_err(|_| Error::NoSuchProcess(pid))?;
        let uids = parse_uids(&status).ok_or(Error::NoSuchProcess(pid))?;
        let exe = dir.join("exe");
        let binary = fs::read_link(&exe).map_err(|source| Error::read(exe.clone(), source))?;
        let meta = fs::metadata(&exe).map_err(|source| Error::read(exe.clone(), source))?;
        let args = read_cmdline(pid);
        let is_qemu = is_qemu_binary(&binary);
        let vm = vm_name(&args)
            .or_else(|| is_qemu.then(|| libvirt_name(pid)).flatten())
            .or_else(|| is_qemu.then(|| format!("qemu-{pid}")))
            .unwrap_or_else(|| comm(pid).unwrap_or_else(|| format!("pid-{pid}")));
        let uuid = vm_uuid(&args).unwrap_or_else(|bad| {
            tracing::debug!(
                "PID {pid}: ignoring -uuid {bad:?}, which is not a UUID (8-4-4-4-12 hex digits)"
            );
            None
        });
        Ok(Self {
            pid,
            vm,
            uuid,
            binary,
            start_time,
            binary_id: (meta.dev(), meta.ino()),
            is_qemu,
            uids,
            exe_owner: meta.uid(),
            exe_mode: meta.mode() & 0o7777,
        })
    }

    /// Whether a process found by its name may be taken for a VM
    /// (docs/ARCHITECTURE.md, "Who is a VM").
    pub fn trust(&self) -> Result<(), Untrusted> {
        trust(
            self.uids,
            self.exe_owner,
            self.exe_mode,
            &self.binary,
            UserUids::host(),
        )
    }

    /// Path that resolves to this process's executable even if the file was
    /// replaced or deleted since it started.
    pub fn exe_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/exe", self.pid))
    }

    /// Whether the process still runs (same PID, same start time).
    pub fn is_alive(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| parse_start_time(&s))
            .is_some_and(|t| t == self.start_time && !is_zombie(self.pid))
    }
}

/// `PF_KTHREAD` in the flags of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

fn trust(
    (uid, euid): (u32, u32),
    exe_owner: u32,
    exe_mode: u32,
    binary: &Path,
    users: UserUids,
) -> Result<(), Untrusted> {
    if let Some(uid) = [uid, euid].into_iter().find(|&u| !users.is_system(u)) {
        return Err(Untrusted::User { uid });
    }
    if exe_owner != 0 {
        return Err(Untrusted::ExeOwner {
            path: binary.to_path_buf(),
            uid: exe_owner,
        });
    }
    if exe_mode & 0o022 != 0 {
        return Err(Untrusted::ExeWritable {
            path: binary.to_path_buf(),
            mode: exe_mode,
        });
    }
    Ok(())
}

/// The uids of ordinary login users, `UID_MIN..=UID_MAX` of
/// /etc/login.defs (default 1000..=60000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserUids {
    pub min: u32,
    pub max: u32,
}

/// The kernel's overflow uid, `nobody`: shared by unrelated unprivileged
/// daemons and unmapped user-namespace ids, so no system account.
const NOBODY: u32 = 65534;

impl UserUids {
    /// This host's range, read once.
    pub fn host() -> Self {
        static RANGE: OnceLock<UserUids> = OnceLock::new();
        *RANGE.get_or_init(|| {
            let defs = fs::read_to_string("/etc/login.defs").unwrap_or_default();
            Self {
                min: login_defs_value(&defs, "UID_MIN").unwrap_or(1000),
                max: login_defs_value(&defs, "UID_MAX").unwrap_or(60000),
            }
        })
    }

    /// Root, or a system account: below `UID_MIN` (Fedora's and RHEL's
    /// `qemu` is 107), or statically allocated between `UID_MAX` and
    /// `nobody` (Debian's and Ubuntu's `libvirt-qemu` is 64055). Ids from
    /// 65535 up belong to user namespaces (containers' subordinate ids).
    pub fn is_system(self, uid: u32) -> bool {
        uid == 0 || uid < self.min || (uid > self.max && uid < NOBODY)
    }
}

fn login_defs_value(login_defs: &str, key: &str) -> Option<u32> {
    login_defs.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == key).then(|| words.next()?.parse().ok())?
    })
}

/// Real and effective uid from the `Uid:` line of /proc/PID/status.
fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|u| u.parse().ok());
    Some((ids.next()??, ids.next()??))
}

/// The QEMU processes on the host, and how many processes this user may
/// not look at.
#[derive(Debug, Default)]
pub struct Scan {
    /// By PID.
    pub qemus: Vec<Process>,
    /// Processes whose executable a non-root vmwatch could not read
    /// (EACCES: another user's). Any of them may be a QEMU.
    pub hidden: usize,
}

/// Finds every process named like QEMU (trusted or not).
pub fn scan() -> Scan {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Scan::default();
    };
    let root = current_uid() == 0;
    let mut scan = Scan::default();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        match fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(exe) if is_qemu_binary(&exe) => {
                // It may exit in between: then it is no longer there to list.
                if let Ok(p) = Process::from_pid(pid) {
                    scan.qemus.push(p);
                }
            }
            // What root cannot inspect (a security module, a capability
            // root lacks) it could not watch either: /proc/PID/mem needs
            // the same access.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && root => {
                tracing::debug!("cannot inspect PID {pid} even as root: {e}");
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                tracing::debug!("cannot inspect PID {pid}: {e}");
                scan.hidden += 1;
            }
            // Not QEMU, a kernel thread, a zombie or gone.
            _ => {}
        }
    }
    scan.qemus.sort_by_key(|p| p.pid);
    scan
}

/// The effective uid of vmwatch itself.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Candidates passed over while resolving `--vm NAME` or `--all`, shown
/// after "no running QEMU process ..." so the error says why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// PID and why it is not taken for a VM.
    pub untrusted: Vec<(u32, Untrusted)>,
    /// Processes this user could not look at (see [`Scan::hidden`]).
    pub hidden: usize,
}

impl Skipped {
    /// "usable " when candidates were skipped, so "no QEMU process is
    /// running" does not deny the ones that are.
    pub fn usable(&self) -> &'static str {
        if self.untrusted.is_empty() {
            ""
        } else {
            "usable "
        }
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut notes = Vec::new();
        if !self.untrusted.is_empty() {
            let n = self.untrusted.len();
            let each: Vec<String> = self
                .untrusted
                .iter()
                .map(|(pid, why)| format!("PID {pid}: {why}"))
                .collect();
            notes.push(format!(
                "{n} candidate{} skipped: {}",
                plural(n),
                each.join("; ")
            ));
        }
        if self.hidden > 0 {
            notes.push(format!(
                "{}; vmwatch needs root",
                hidden_from(self.hidden, current_uid())
            ));
        }
        if notes.is_empty() {
            return Ok(());
        }
        write!(f, " ({})", notes.join("; "))
    }
}

/// "N processes are hidden from uid U".
pub fn hidden_from(hidden: usize, uid: u32) -> String {
    let (noun, verb) = if hidden == 1 {
        ("process", "is")
    } else {
        ("processes", "are")
    };
    format!("{hidden} {noun} {verb} hidden from uid {uid}")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// QEMU system emulators are named `qemu-system-ARCH` (or `qemu-kvm` on
/// some distributions).
pub fn is_qemu_binary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(" (deleted)"))
        .is_some_and(|n| n.starts_with("qemu-system-") || n == "qemu-kvm")
}

/// The VM name from QEMU's `-name guest=NAME,...` or `-name NAME,...`
/// (`--name` too). QEMU merges repeated `-name` options, a later `guest`
/// replacing an earlier one, so the last `guest` wins.
pub fn vm_name(args: &[String]) -> Option<String> {
    option_values(args, "name")
        .filter_map(name_guest)
        .last()
        .filter(|name| !name.is_empty())
}

/// The `guest` of one `-name` value (the last, if repeated, as in QEMU).
/// QEMU option syntax: comma separated, `,,` escapes a comma; the first
/// element without a key is the `guest`.
fn name_guest(value: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p.split_once('=') {
            Some(("guest", v)) => Some(v.to_string()),
            None if i == 0 => Some(p.clone()),
            _ => None,
        })
        .next_back()
}

/// The values of every `-OPT VALUE` or `--OPT VALUE` in `args`. QEMU takes
/// an option's value from the next argument only: `-uuid=X` is an unknown
/// option to it, so it is none here either.
fn option_values<'a>(args: &'a [String], opt: &'a str) -> impl Iterator<Item = &'a str> {
    args.windows(2).filter_map(move |w| {
        let name = w[0].strip_prefix("--").or_else(|| w[0].strip_prefix('-'))?;
        (name == opt).then_some(w[1].as_str())
    })
}

/// The VM's UUID from QEMU's `-uuid UUID` (or `--uuid`), lower-cased; the
/// last one counts, as in QEMU. `Err` holds a value QEMU would refuse.
pub fn vm_uuid(args: &[String]) -> Result<Option<String>, &str> {
    match option_values(args, "uuid").last() {
        None => Ok(None),
        Some(value) => parse_uuid(value).map(Some).ok_or(value),
    }
}

/// A UUID as QEMU's `qemu_uuid_parse` takes it: 36 characters, dashes at
/// 8, 13, 18 and 23, hex digits of either case elsewhere (no braces, no
/// `urn:uuid:`); returned in lower case.
pub fn parse_uuid(s: &str) -> Option<String> {
    let valid = s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    valid.then(|| s.to_ascii_lowercase())
}

/// Where the system libvirt daemon keeps one `NAME.pid` per running QEMU
/// domain (`virtqemud` and `libvirtd` alike).
pub const LIBVIRT_QEMU_RUN_DIR: &str = "/run/libvirt/qemu";

/// libvirt's name for the domain QEMU process `pid` runs, for a QEMU
/// started without `-name` (libvirt always passes one, so this is for
/// wrappers that rewrite the command line): its PID file in
/// [`LIBVIRT_QEMU_RUN_DIR`], which holds the exact name, else its machine
/// cgroup, which holds libvirt's abridged form of it (see
/// [`libvirt_name_from_cgroup`]).
pub fn libvirt_name(pid: u32) -> Option<String> {
    libvirt_name_from_pid_files(Path::new(LIBVIRT_QEMU_RUN_DIR), pid).or_else(|| {
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        libvirt_name_from_cgroup(&cgroup)
    })
}

/// The `NAME` of the `dir/NAME.pid` whose content is `pid`. `dir` counts
/// only if root owns it and nobody else may write to it, as libvirt makes
/// it: a name there is as good as the daemon's word.
pub fn libvirt_name_from_pid_files(dir: &Path, pid: u32) -> Option<String> {
    name_from_pid_files(dir, pid, 0)
}

/// The longest PID file read (a PID and a newline fit many times over).
const PID_FILE_MAX: u64 = 32;

/// [`libvirt_name_from_pid_files`] with `dir` owned by `owner`.
fn name_from_pid_files(dir: &Path, pid: u32, owner: u32) -> Option<String> {
    let meta = fs::symlink_metadata(dir).ok()?;
    if !meta.is_dir() || meta.uid() != owner || meta.mode() & 0o022 != 0 {
        tracing::debug!(
            "ignoring {}: not a directory only root may write to",
            dir.display()
        );
        return None;
    }
    fs::read_dir(dir).ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let file = entry.file_name().into_string().ok()?;
        let name = file.strip_suffix(".pid").filter(|n| !n.is_empty())?;
        // Not through a symbolic link, and no more than a PID's worth.
        if !entry.file_type().ok()?.is_file() {
            return None;
        }
        let mut text = String::new();
        fs::File::open(entry.path())
            .ok()?
            .take(PID_FILE_MAX + 1)
            .read_to_string(&mut text)
            .ok()?;
        let is_pid = text.len() as u64 <= PID_FILE_MAX && text.trim().parse() == Ok(pid);
        is_pid.then(|| name.to_string())
    })
}

/// libvirt's domain name from the text of /proc/PID/cgroup (cgroup v1 or
/// v2 lines, `ID:CONTROLLERS:PATH`), from the first path that has a
/// libvirt machine cgroup:
/// - under systemd, machined's scope `machine-qemu\x2dID\x2dNAME.scope`
///   (systemd's escaping: `\xHH` is the byte HH, so `\x2d` is `-`), in
///   `machine.slice` or a partition's slice, with `libvirt/emulator` or
///   `emulator` below it;
/// - without systemd, `machine/qemu-ID-NAME.libvirt-qemu/emulator` (or a
///   partition's `NAME.partition` instead of `machine`).
///
/// The machine name is `qemu-ID-NAME`, or `qemu-embed-HASH-ID-NAME` for
/// the embedded driver (`virt-qemu-run`). libvirt builds it from the
/// domain name (the rule of libvirt 9.0, Debian 12's; since 4.0 much the
/// same) by keeping only ASCII letters, digits, `-` and `.`, collapsing a
/// run of `-` and `.` to its first, dropping them at both ends, and
/// cutting the whole machine name at 64 characters. So what comes back is
/// that abridged name, the domain name itself only when it was in that
/// form already and short enough (up to 57 characters for domain ID 1).
/// Session daemons' machine names (`qemu-USER-ID-NAME`) and older
/// libvirt's (`qemu-NAME`) are not recognised.
pub fn libvirt_name_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(libvirt_machine_cgroup)
    })
}

/// The domain name of one cgroup path component that is a libvirt
/// machine's cgroup.
fn libvirt_machine_cgroup(component: &str) -> Option<String> {
    let machine = match component
        .strip_prefix("machine-")
        .and_then(|c| c.strip_suffix(".scope"))
    {
        Some(escaped) => systemd_unescape(escaped)?,
        None => component.strip_suffix(".libvirt-qemu")?.to_string(),
    };
    domain_of_machine(&machine)
}

/// `NAME` of the machine name `qemu-ID-NAME` or `qemu-embed-HASH-ID-NAME`.
fn domain_of_machine(machine: &str) -> Option<String> {
    let mut rest = machine.strip_prefix("qemu-")?;
    if let Some(embed) = rest.strip_prefix("embed-") {
        let (hash, after) = embed.split_once('-')?;
        if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        rest = after;
    }
    let (id, name) = rest.split_once('-')?;
    let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    (id_ok && !name.is_empty()).then(|| name.to_string())
}

/// Undoes systemd's unit name escaping (`\xHH` for a byte); `None` for a
/// malformed escape or a result that is not UTF-8.
fn systemd_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let hex = bytes.get(i + 2..i + 4)?;
            if bytes.get(i + 1) != Some(&b'x') || !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn read_cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    // The command name in parentheses may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// Start time of process `pid` in clock ticks since boot, if it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of /proc/PID/stat (starttime); fields after `comm` start at 3.
fn parse_start_time(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_fields(&s).map(|f| matches!(f.first(), Some(&"Z") | Some(&"X"))))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn vm_name_forms() {
        for (cmdline, want) in [
            (&["qemu", "-name", "web1"][..], Some("web1")),
            (&["qemu", "--name", "web1"], Some("web1")),
            (&["qemu", "-name", "guest=db,debug-threads=on"], Some("db")),
            (&["qemu", "-name", "process=x,guest=a,,b"], Some("a,b")),
            (&["qemu", "-name", "lab,process=q"], Some("lab")),
            (&["qemu", "-name", "lab,guest=web"], Some("web")),
            // QEMU merges repeated -name: the last guest wins.
            (&["qemu", "-name", "a", "-name", "guest=b"], Some("b")),
            (
                &["qemu", "-name", "guest=a", "-name", "process=p"],
                Some("a"),
            ),
            (&["qemu", "-name=web1"], None),
            (&["qemu", "-name", "guest="], None),
            (&["qemu", "-m", "512"], None),
            (&["qemu", "-name"], None),
        ] {
            assert_eq!(vm_name(&args(cmdline)).as_deref(), want, "{cmdline:?}");
        }
    }

    const UUID: &str = "4d9c8e2a-1b3f-4c5d-8e6f-0123456789ab";

    #[test]
    fn uuid_forms() {
        let upper = UUID.to_ascii_uppercase();
        for (cmdline, want) in [
            (&["qemu", "-uuid", UUID][..], Ok(Some(UUID))),
            (&["qemu", "--uuid", &upper], Ok(Some(UUID))),
            // Last one wins, as in QEMU.
            (
                &[
                    "qemu",
                    "-uuid",
                    "00000000-0000-0000-0000-000000000001",
                    "-uuid",
                    UUID,
                ],
                Ok(Some(UUID)),
            ),
            // Not an option QEMU knows ("invalid option"), so no UUID.
            (&["qemu", &format!("-uuid={UUID}")], Ok(None)),
            (&["qemu", "-m", "64"], Ok(None)),
            (&["qemu", "-uuid"], Ok(None)),
            (&["qemu", "-uuid", "web1"], Err("web1")),
            (&["qemu", "-uuid", UUID, "-uuid", "x"], Err("x")),
        ] {
            let argv = args(cmdline);
            let got = vm_uuid(&argv);
            let got = got.as_ref().map(Option::as_deref).map_err(|e| *e);
            assert_eq!(got, want, "{cmdline:?}");
        }
    }

    #[test]
    fn uuid_syntax_is_qemus() {
        assert_eq!(parse_uuid(UUID).as_deref(), Some(UUID));
        assert_eq!(
            parse_uuid("4D9C8E2A-1B3F-4C5D-8E6F-0123456789Ab").as_deref(),
            Some(UUID)
        );
        for bad in [
            "",
            "4d9c8e2a1b3f4c5d8e6f0123456789ab",
            "{4d9c8e2a-1b3f-4c5d-8e6f-0123456789ab}",
            "urn:uuid:4d9c8e2a-1b3f-4c5d-8e6f-0123456789ab",
            "4d9c8e2a-1b3f-4c5d-8e6f-0123456789a",
            "4d9c8e2a-1b3f-4c5d-8e6f-0123456789abc",
            "4d9c8e2a-1b3f-4c5d-8e6f+0123456789ab",
            "4d9c8e2a-1b3f-4c5d-8e6f-0123456789ag",
            "4d9c8e2a-1b3f-4c5d-8e6f-0123456789 b",
            "4d9c8e2a-1b3f-4c5d-8e6f-0123456789\u{e9}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn libvirt_cgroup_forms() {
        for (text, want) in [
            // systemd, cgroup v2: machined's scope, libvirt's own subtree.
            ("0::/machine.slice/machine-qemu\\x2d1\\x2dweb1.scope/libvirt/emulator\n", Some("web1")),
            // systemd, cgroup v1 (and its name=systemd hierarchy).
            (
                "12:pids:/machine.slice/machine-qemu\\x2d3\\x2ddb\\x2dprimary.scope\n\
                 4:cpu,cpuacct:/machine.slice/machine-qemu\\x2d3\\x2ddb\\x2dprimary.scope/emulator\n\
                 1:name=systemd:/machine.slice/machine-qemu\\x2d3\\x2ddb\\x2dprimary.scope\n",
                Some("db-primary"),
            ),
            // A partition's slice (<resource><partition>/machine/prod</partition>).
            ("0::/machine.slice/machine-prod.slice/machine-qemu\\x2d7\\x2dapi.scope/libvirt/vcpu0", Some("api")),
            // Without systemd (as libvirt 9.0 makes them on this project's
            // hosts: v1 controllers first, then the v2 line).
            (
                "9:name=systemd:/\n8:pids:/\n7:blkio:/machine/qemu-1-vmwatch-lv-test.libvirt-qemu\n\
                 3:cpuset:/machine/qemu-1-vmwatch-lv-test.libvirt-qemu/emulator\n\
                 0::/machine/qemu-1-vmwatch-lv-test.libvirt-qemu/emulator\n",
                Some("vmwatch-lv-test"),
            ),
            ("0::/machine/prod.partition/qemu-12-api.libvirt-qemu/emulator", Some("api")),
            // The embedded driver (virt-qemu-run).
            ("0::/machine/qemu-embed-0123abcd-1-web1.libvirt-qemu", Some("web1")),
            ("0::/machine.slice/machine-qemu\\x2dembed\\x2d0123abcd\\x2d1\\x2dweb1.scope", Some("web1")),
            // Other escapes decode too; a ':' in a path is the path's.
            ("0::/x:y/machine-qemu\\x2d1\\x2dweb\\x2e1.scope", Some("web.1")),
            // libvirt's abridged names come back as they are.
            ("0::/machine/qemu-2-web.example.com.libvirt-qemu", Some("web.example.com")),
            // A cgroup namespace shows paths from its own root.
            ("0::/../../machine.slice/machine-qemu\\x2d1\\x2dweb1.scope/libvirt", Some("web1")),
            // Not libvirt's: a user session, an nspawn container, older
            // libvirt's and session daemons' names, a bad ID, no name.
            ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
            ("0::/machine.slice/machine-debian.scope", None),
            ("0::/machine.slice/machine-qemu\\x2dweb1.scope", None),
            ("0::/machine.slice/machine-qemu\\x2dalice\\x2d1\\x2dweb1.scope", None),
            ("0::/machine/qemu-x-web1.libvirt-qemu", None),
            ("0::/machine/qemu-1-.libvirt-qemu", None),
            ("0::/machine/qemu-embed-0123-1-web1.libvirt-qemu", None),
            // Malformed escapes.
            ("0::/machine.slice/machine-qemu\\x2d1\\x2dweb\\x2.scope", None),
            ("0::/machine.slice/machine-qemu\\x2d1\\x2dweb\\q1.scope", None),
            ("0::/machine.slice/machine-qemu\\x2d1\\x2dweb\\x+1.scope", None),
            ("0::/machine.slice/machine-qemu\\x2d1\\x2dweb\\xff.scope", None),
            ("0::/\n", None),
            ("", None),
            ("garbage", None),
        ] {
            assert_eq!(libvirt_name_from_cgroup(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn libvirt_pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        fs::write(d.join("web1.pid"), "4242").unwrap();
        fs::write(d.join("db primary.pid"), "4243\n").unwrap();
        // libvirt's own lock file holds the daemon's PID.
        fs::write(d.join("driver.pid"), "17").unwrap();
        fs::write(d.join("web1.xml"), "4244").unwrap();
        fs::write(d.join(".pid"), "4245").unwrap();
        fs::write(d.join("big.pid"), format!("4246{}", " ".repeat(100))).unwrap();
        fs::write(d.join("target"), "4247").unwrap();
        std::os::unix::fs::symlink(d.join("target"), d.join("link.pid")).unwrap();
        fs::create_dir(d.join("swtpm.pid")).unwrap();
        let me = current_uid();
        let name = |pid| name_from_pid_files(d, pid, me);
        assert_eq!(name(4242).as_deref(), Some("web1"));
        assert_eq!(name(4243).as_deref(), Some("db primary"));
        assert_eq!(name(17).as_deref(), Some("driver"));
        for pid in [4244, 4245, 4246, 4247, 1] {
            assert_eq!(name(pid), None, "PID {pid}");
        }
        // Only a directory others cannot write counts, and only its owner's.
        assert_eq!(name_from_pid_files(d, 4242, me + 1), None);
        fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o775)).unwrap();
        assert_eq!(name(4242), None);
        assert_eq!(name_from_pid_files(&d.join("web1.pid"), 4242, me), None);
        assert_eq!(name_from_pid_files(&d.join("missing"), 4242, me), None);
    }

    #[test]
    fn qemu_binary_names() {
        assert!(is_qemu_binary(Path::new("/usr/bin/qemu-system-x86_64")));
        assert!(is_qemu_binary(Path::new("/x/qemu-system-x86_64 (deleted)")));
        assert!(is_qemu_binary(Path::new("/usr/libexec/qemu-kvm")));
        assert!(!is_qemu_binary(Path::new("/usr/bin/qemu-img")));
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777 1000 50";
        assert_eq!(parse_start_time(stat), Some(777));
    }

    #[test]
    fn own_process_is_alive_and_not_qemu() {
        let me = Process::from_pid(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(!me.is_qemu);
        let uid = current_uid();
        assert_eq!(me.uids.1, uid);
    }

    #[test]
    fn trust_rules() {
        let bin = Path::new("/usr/bin/qemu-system-x86_64");
        let users = UserUids {
            min: 1000,
            max: 60000,
        };
        let check = |uids, owner, mode| trust(uids, owner, mode, bin, users);
        assert_eq!(check((0, 0), 0, 0o755), Ok(()));
        // Fedora's `qemu`, Debian's `libvirt-qemu`.
        assert_eq!(check((107, 107), 0, 0o755), Ok(()));
        assert_eq!(check((64055, 64055), 0, 0o755), Ok(()));
        for uid in [1000, 60000, NOBODY, 65535, 100_000] {
            assert_eq!(
                check((uid, uid), 0, 0o755),
                Err(Untrusted::User { uid }),
                "uid {uid}"
            );
        }
        // A setuid-root binary run by a user keeps the user's real uid.
        assert_eq!(
            check((1000, 0), 0, 0o4755),
            Err(Untrusted::User { uid: 1000 })
        );
        assert_eq!(
            check((0, NOBODY), 0, 0o755),
            Err(Untrusted::User { uid: NOBODY })
        );
        assert_eq!(
            check((0, 0), 1000, 0o755),
            Err(Untrusted::ExeOwner {
                path: bin.into(),
                uid: 1000
            })
        );
        for mode in [0o775, 0o757, 0o777] {
            assert_eq!(
                check((0, 0), 0, mode),
                Err(Untrusted::ExeWritable {
                    path: bin.into(),
                    mode
                })
            );
        }
        assert_eq!(
            Untrusted::ExeWritable {
                path: bin.into(),
                mode: 0o777
            }
            .to_string(),
            "its executable /usr/bin/qemu-system-x86_64 is writable by group or others (mode 0777)"
        );
    }

    #[test]
    fn login_defs_and_status() {
        let defs = "# UID_MIN 5\nMAIL_DIR /var/mail\nUID_MIN\t\t\t 2000\nUID_MAX 60000\n";
        assert_eq!(login_defs_value(defs, "UID_MIN"), Some(2000));
        assert_eq!(login_defs_value(defs, "UID_MAX"), Some(60000));
        assert_eq!(login_defs_value(defs, "SYS_UID_MIN"), None);
        let status = "Name:\tqemu\nUmask:\t0022\nUid:\t64055\t0\t64055\t64055\nGid:\t1\t2\t3\t4\n";
        assert_eq!(parse_uids(status), Some((64055, 0)));
        assert_eq!(parse_uids("Name:\tx\n"), None);
    }

    #[test]
    fn skipped_note() {
        assert_eq!(Skipped::default().to_string(), "");
        let s = Skipped {
            untrusted: vec![
                (5, Untrusted::User { uid: 1000 }),
                (6, Untrusted::User { uid: 1001 }),
            ],
            hidden: 0,
        };
        assert_eq!(
            s.to_string(),
            " (2 candidates skipped: PID 5: run by uid 1000, which is neither root nor a \
             system account; PID 6: run by uid 1001, which is neither root nor a system account)"
        );
        assert_eq!(hidden_from(1, 7), "1 process is hidden from uid 7");
        assert_eq!(hidden_from(3, 7), "3 processes are hidden from uid 7");
    }

    #[test]
    fn kernel_threads_and_zombies_are_named() {
        // PID 2 is kthreadd unless a PID namespace hides the kernel threads.
        if fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim_end() == "kthreadd") {
            assert!(matches!(Process::from_pid(2), Err(Error::KernelThread(2))));
        }
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_zombie(pid) {
            assert!(std::time::Instant::now() < end, "PID {pid} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let got = Process::from_pid(pid);
        child.wait().unwrap();
        assert!(matches!(got, Err(Error::Zombie(p)) if p == pid), "{got:?}");
    }
}
