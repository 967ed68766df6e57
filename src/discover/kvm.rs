//! `--source kvm`: discovery of the running kernel's KVM tracepoints (groups
//! `kvm` and `kvmmmu`) and of the exit reasons of `kvm_exit`, as `kvm_stat`
//! does, from tracefs. tracefs is mounted privately for the look-up when the
//! host has not mounted it, and unmounted again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use vmwatch_core::features::Feature;

/// What the running kernel offers.
#[derive(Debug, Clone, Default)]
pub struct KvmEvents {
    /// Tracepoint names of the `kvm` and `kvmmmu` groups.
    pub events: Vec<String>,
    /// The `kvm_exit` tracepoint, if it exists.
    pub exit: Option<ExitTracepoint>,
}

/// Where `kvm_exit` keeps its exit reason, and the reasons' names.
#[derive(Debug, Clone)]
pub struct ExitTracepoint {
    /// Tracepoint ID (perf_event_attr.config).
    pub id: u64,
    /// Offsets of the `exit_reason` (u32) and `isa` (u32) fields.
    pub reason_offset: u32,
    pub isa_offset: u32,
    /// Exit reason -> name for this host's ISA (VMX on Intel, SVM on AMD).
    pub reasons: BTreeMap<u32, String>,
    /// Whether the reason is masked with 0xffff first (VMX).
    pub vmx: bool,
}

impl KvmEvents {
    /// Features: every event, then the exit reasons by name and the
    /// catch-all `kvm:exit:other`.
    pub fn features(&self) -> Vec<Feature> {
        let mut out: Vec<Feature> = self.events.iter().cloned().map(Feature::KvmEvent).collect();
        if let Some(exit) = &self.exit {
            let reasons: BTreeSet<&String> = exit.reasons.values().collect();
            out.extend(reasons.into_iter().cloned().map(Feature::KvmExit));
            out.push(Feature::kvm_exit_other());
        }
        out
    }
}

/// Reads the KVM tracepoints of the running kernel.
pub fn discover() -> Result<KvmEvents> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return read_events(Path::new(dir));
        }
    }
    let mount = PrivateTracefs::mount()?;
    read_events(&mount.path)
}

fn read_events(tracefs: &Path) -> Result<KvmEvents> {
    let mut out = KvmEvents::default();
    for group in ["kvm", "kvmmmu"] {
        let dir = tracefs.join("events").join(group);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("format").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        out.events.extend(names);
    }
    if out.events.is_empty() {
        return Err(Error::Invalid(
            "this kernel has no KVM tracepoints (is KVM built or loaded?)".into(),
        ));
    }
    let format = tracefs.join("events/kvm/kvm_exit/format");
    if let Ok(text) = std::fs::read_to_string(&format) {
        out.exit = parse_exit_format(&text, host_is_intel());
    }
    Ok(out)
}

fn host_is_intel() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.contains("GenuineIntel"))
        .unwrap_or(false)
}

/// Parses `kvm_exit`'s format: ID, field offsets, and the symbolic table
/// of exit reasons for the host's ISA (first table VMX, second SVM).
pub fn parse_exit_format(text: &str, intel: bool) -> Option<ExitTracepoint> {
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("ID:"))?
        .trim()
        .parse()
        .ok()?;
    let field_offset = |name: &str| -> Option<u32> {
        let line = text.lines().find(|l| {
            l.contains("field:")
                && l.split(';')
                    .next()
                    .is_some_and(|decl| decl.ends_with(&format!(" {name}")))
        })?;
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    };
    let reason_offset = field_offset("exit_reason")?;
    let isa_offset = field_offset("isa").unwrap_or(u32::MAX);
    let fmt = text.lines().find(|l| l.starts_with("print fmt:"))?;
    let tables: Vec<&str> = fmt.split("__print_symbolic(").skip(1).collect();
    let table = if intel {
        tables.first()?
    } else {
        tables.get(1).or(tables.first())?
    };
    Some(ExitTracepoint {
        id,
        reason_offset,
        isa_offset,
        reasons: parse_symbolic(table),
        vmx: intel,
    })
}

/// `{ VALUE, "NAME" }` pairs up to the end of one `__print_symbolic(...)`.
/// VALUE may be `0x40 + 6` or `-1`; names become feature-safe.
fn parse_symbolic(table: &str) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let mut rest = table;
    while let Some(open) = rest.find('{') {
        // A closing parenthesis before the next pair ends this table.
        if rest[..open].contains(')') {
            break;
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let pair = &rest[open + 1..open + close];
        rest = &rest[open + close + 1..];
        let Some((value, name)) = pair.split_once(',') else {
            continue;
        };
        let name = name.trim().trim_matches('"');
        let Some(v) = eval_sum(value) else { continue };
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        out.insert(v as u32, safe);
    }
    out
}

fn eval_sum(expr: &str) -> Option<i64> {
    expr.split('+').try_fold(0i64, |acc, term| {
        let t = term.trim();
        let v = if let Some(hex) = t.strip_prefix("0x") {
            i64::from_str_radix(hex, 16).ok()?
        } else {
            t.parse::<i64>().ok()?
        };
        Some(acc + v)
    })
}

/// tracefs mounted on a private temporary directory for the look-up.
struct PrivateTracefs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateTracefs {
    fn mount() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("vmwatch-tracefs-")
            .tempdir()
            .map_err(|e| Error::io("creating a tracefs mount point", e))?;
        let path = dir.path().to_path_buf();
        let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid("temporary path holds a NUL".into()))?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"nodev".as_ptr(),
                target.as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "mounting tracefs to list the KVM tracepoints (needs CAP_SYS_ADMIN)",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { path, _dir: dir })
    }
}

impl Drop for PrivateTracefs {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = r#"name: kvm_exit
ID: 103
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned int exit_reason;	offset:8;	size:4;	signed:0;
	field:u32 isa;	offset:24;	size:4;	signed:0;

print fmt: "vcpu %u reason %s", REC->vcpu_id, (REC->isa == 1) ? __print_symbolic(REC->exit_reason & 0xffff, { 0, "EXCEPTION_NMI" }, { 12, "HLT" }, { 30, "IO_INSTRUCTION" }) : __print_symbolic(REC->exit_reason, { 0x040 + 14, "PF excp" }, { 0x07b, "io" }, { -1, "invalid_guest_state" }), (REC->isa == 1) ? __print_flags(REC->exit_reason & ~0xffff, " ", { 0x80000000, "FAILED_VMENTRY" }) : ""
"#;

    #[test]
    fn parses_the_svm_table_on_amd() {
        let e = parse_exit_format(FORMAT, false).unwrap();
        assert_eq!((e.id, e.reason_offset, e.isa_offset), (103, 8, 24));
        assert_eq!(e.reasons[&0x4e], "PF_excp");
        assert_eq!(e.reasons[&0x7b], "io");
        assert_eq!(e.reasons[&u32::MAX], "invalid_guest_state");
        assert_eq!(e.reasons.len(), 3, "the flags table is not a reason");
    }

    #[test]
    fn parses_the_vmx_table_on_intel() {
        let e = parse_exit_format(FORMAT, true).unwrap();
        assert!(e.vmx);
        assert_eq!(e.reasons[&12], "HLT");
        assert_eq!(e.reasons.len(), 3);
    }

    #[test]
    fn features_list_events_then_reasons() {
        let k = KvmEvents {
            events: vec!["kvm_exit".into(), "kvm_pio".into()],
            exit: parse_exit_format(FORMAT, false),
        };
        let f: Vec<String> = k.features().iter().map(|f| f.to_string()).collect();
        assert_eq!(f[..2], ["kvm:kvm_exit", "kvm:kvm_pio"]);
        assert!(f.contains(&"kvm:exit:io".to_string()));
        assert_eq!(f.last().unwrap(), "kvm:exit:other");
    }
}
