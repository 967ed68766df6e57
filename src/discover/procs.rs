//! Host processes: finding QEMU processes, their VM names and binaries,
//! whether a QEMU-named process may be taken for a VM, and telling whether
//! a watched PID is still the same process.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

use crate::error::{Error, Result};

/// A process vmwatch can watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    /// VM name from `-name`, else `qemu-PID` for QEMU, else the command name.
    pub vm: String,
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
    /// The VM's UUID from QEMU's `-uuid` (libvirt always passes one).
    pub uuid: Option<String>,
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
            .or_else(|| is_qemu.then(|| format!("qemu-{pid}")))
            .unwrap_or_else(|| comm(pid).unwrap_or_else(|| format!("pid-{pid}")));
        Ok(Self {
            pid,
            vm,
            binary,
            start_time,
            binary_id: (meta.dev(), meta.ino()),
            is_qemu,
            uuid: vm_uuid(&args),
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

/// The UUID from QEMU's `-uuid UUID`, in canonical lower-case form; none
/// when absent or not a UUID.
pub fn vm_uuid(args: &[String]) -> Option<String> {
    let pos = args.iter().position(|a| a == "-uuid" || a == "--uuid")?;
    let value = args.get(pos + 1)?.to_ascii_lowercase();
    let groups: Vec<&str> = value.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    (shape && hex).then_some(value)
}

/// The VM name from QEMU's `-name guest=NAME,...` or `-name NAME,...`.
pub fn vm_name(args: &[String]) -> Option<String> {
    let pos = args.iter().position(|a| a == "-name" || a == "--name")?;
    let value = args.get(pos + 1)?;
    // QEMU option syntax: comma separated, `,,` escapes a comma; the first
    // element without a key is the `guest` value.
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
    let name = parts
        .iter()
        .enumerate()
        .find_map(|(i, p)| match p.split_once('=') {
            Some(("guest", v)) => Some(v.to_string()),
            None if i == 0 => Some(p.clone()),
            _ => None,
        })?;
    (!name.is_empty()).then_some(name)
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
    fn vm_uuids() {
        let a = |s: &[&str]| vm_uuid(&args(s));
        let u = "7d2c9f0e-1b3a-4c5d-8e9f-0a1b2c3d4e5f";
        assert_eq!(a(&["qemu", "-uuid", u]).as_deref(), Some(u));
        assert_eq!(
            a(&["qemu", "--uuid", &u.to_ascii_uppercase()]).as_deref(),
            Some(u)
        );
        assert_eq!(a(&["qemu", "-uuid", "not-a-uuid"]), None);
        assert_eq!(a(&["qemu", "-uuid"]), None);
        assert_eq!(a(&["qemu", "-name", "x"]), None);
    }

    #[test]
    fn vm_name_forms() {
        for (cmdline, want) in [
            (&["qemu", "-name", "web1"][..], Some("web1")),
            (&["qemu", "-name", "guest=db,debug-threads=on"], Some("db")),
            (&["qemu", "-name", "process=x,guest=a,,b"], Some("a,b")),
            (&["qemu", "-name", "lab,process=q"], Some("lab")),
            (&["qemu", "-m", "512"], None),
            (&["qemu", "-name"], None),
        ] {
            assert_eq!(vm_name(&args(cmdline)).as_deref(), want, "{cmdline:?}");
        }
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
