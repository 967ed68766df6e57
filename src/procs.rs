//! Host processes: finding QEMU processes, their VM names and binaries, and
//! telling whether a watched PID is still the same process.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
}

impl Process {
    /// Reads a process by PID.
    pub fn from_pid(pid: u32) -> Result<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let stat = fs::read_to_string(dir.join("stat")).map_err(|_| Error::NoSuchProcess(pid))?;
        let start_time = parse_start_time(&stat).ok_or(Error::NoSuchProcess(pid))?;
        let exe = dir.join("exe");
        let binary = fs::read_link(&exe).map_err(|source| Error::Read {
            path: exe.clone(),
            source,
        })?;
        let meta = fs::metadata(&exe).map_err(|source| Error::Read {
            path: exe.clone(),
            source,
        })?;
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
        })
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

/// All QEMU processes on the host, by PID.
pub fn qemu_processes() -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<Process> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            is_qemu_binary(&exe).then(|| Process::from_pid(pid).ok())?
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// QEMU system emulators are named `qemu-system-ARCH` (or `qemu-kvm` on
/// some distributions).
pub fn is_qemu_binary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(" (deleted)"))
        .is_some_and(|n| n.starts_with("qemu-system-") || n == "qemu-kvm")
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
    fn vm_name_forms() {
        assert_eq!(
            vm_name(&args(&["qemu", "-name", "web1"])).as_deref(),
            Some("web1")
        );
        assert_eq!(
            vm_name(&args(&["qemu", "-name", "guest=db,debug-threads=on"])).as_deref(),
            Some("db")
        );
        assert_eq!(
            vm_name(&args(&["qemu", "-name", "process=x,guest=a,,b"])).as_deref(),
            Some("a,b")
        );
        assert_eq!(
            vm_name(&args(&["qemu", "-name", "lab,process=q"])).as_deref(),
            Some("lab")
        );
        assert_eq!(vm_name(&args(&["qemu", "-m", "512"])), None);
        assert_eq!(vm_name(&args(&["qemu", "-name"])), None);
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
    }
}
