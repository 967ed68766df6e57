//! Feature names: one namespace per source (`qemu:`, `sys:`, `kvm:`), so
//! rows from several sources join into one vector (see DESIGN.md).

use std::path::Path;

use crate::error::{shown, Error, Result};

/// A source of features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// QEMU's USDT probes (`qemu:`).
    Qemu,
    /// System calls of the QEMU process, counted in BPF (`sys:`).
    Syscalls,
    /// KVM tracepoints hit by the QEMU process's threads (`kvm:`).
    Kvm,
    /// System calls counted by the real `strace -c -f` (`sys:`): the
    /// paper's baseline, for comparison only.
    Strace,
}

impl Source {
    /// The source a feature name belongs to.
    pub fn of(feature: &str) -> Option<Self> {
        if feature.starts_with(QEMU) {
            Some(Source::Qemu)
        } else if feature.starts_with(SYS) {
            Some(Source::Syscalls)
        } else if feature.starts_with(crate::kvm::KVM) {
            Some(Source::Kvm)
        } else {
            None
        }
    }

    /// Whether `feature` comes from one of `sources` (an empty list allows
    /// all). `strace` and `syscalls` both name `sys:` features.
    pub fn any_of(sources: &[Source], feature: &str) -> bool {
        if sources.is_empty() {
            return true;
        }
        let norm = |s: Source| {
            if s == Source::Strace {
                Source::Syscalls
            } else {
                s
            }
        };
        Source::of(feature).is_some_and(|f| sources.iter().any(|&s| norm(s) == f))
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Qemu => "qemu",
            Source::Syscalls => "syscalls",
            Source::Kvm => "kvm",
            Source::Strace => "strace",
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(Source::Qemu),
            "syscalls" => Ok(Source::Syscalls),
            "kvm" => Ok(Source::Kvm),
            "strace" => Ok(Source::Strace),
            other => Err(format!(
                "unknown source `{other}` (sources: qemu, syscalls, kvm, strace)"
            )),
        }
    }
}

/// Prefix of QEMU USDT probe features.
pub const QEMU: &str = "qemu:";

/// Prefix of syscall features.
pub const SYS: &str = "sys:";

/// Feature name of a syscall.
pub fn sys_feature(name: &str) -> String {
    format!("{SYS}{name}")
}

/// Syscalls that are tracing machinery, not the traced program's behaviour:
/// on Linux ≥ 6.18 every hit of an optimized uprobe (a USDT probe on a 5-byte
/// nop, as in the lab's QEMU) enters the kernel through the `uprobe` syscall,
/// so counting it would count vmwatch's own probes a second time.
const TRACING_SYSCALLS: [&str; 2] = ["uprobe", "uretprobe"];

/// Every syscall of the running architecture but the tracing ones:
/// (feature name, number).
pub fn syscall_features() -> Vec<(String, u32)> {
    syscalls::Sysno::iter()
        .filter(|s| !TRACING_SYSCALLS.contains(&s.name()))
        .map(|s| (sys_feature(s.name()), s.id() as u32))
        .collect()
}

/// Feature name of a QEMU probe.
pub fn qemu_feature(probe: &str) -> String {
    format!("{QEMU}{probe}")
}

/// Reads a feature list (at most
/// [`MAX_FEATURE_LIST_BYTES`](crate::limits::MAX_FEATURE_LIST_BYTES)); see
/// [`parse_feature_list`].
pub fn read_feature_list(path: &Path) -> Result<Vec<String>> {
    let bytes = crate::limits::read_file(
        path,
        crate::limits::MAX_FEATURE_LIST_BYTES,
        "a feature list",
    )?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Read {
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ),
    })?;
    parse_feature_list(&path.display().to_string(), &text)
}

/// Parses a feature list: one name per line; blank lines and `#` comments
/// are ignored. A bare probe name means `qemu:NAME`. `name` names the list
/// in messages.
pub fn parse_feature_list(name: &str, text: &str) -> Result<Vec<String>> {
    parse_lines(text).map_err(|msg| Error::Invalid(format!("{name}: {msg}")))
}

fn parse_lines(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.split_whitespace().count() != 1 {
            return Err(format!(
                "line {}: expected one feature name, got `{}`",
                i + 1,
                shown(line)
            ));
        }
        let name = if line.contains(':') {
            line.to_string()
        } else {
            qemu_feature(line)
        };
        // A set, not `out.contains`: a long list must not take quadratic time.
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err("the feature list is empty".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_syscalls_are_not_features() {
        let names: Vec<String> = syscall_features().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"sys:getppid".to_string()));
        assert!(!names
            .iter()
            .any(|n| n == "sys:uprobe" || n == "sys:uretprobe"));
    }

    #[test]
    fn parses_names_comments_and_bare_probes() {
        let list = parse_feature_list(
            "f",
            "# chosen\nqemu:tap_send\n\nvirtqueue_fill # mem\nqemu:tap_send\n",
        )
        .unwrap();
        assert_eq!(list, ["qemu:tap_send", "qemu:virtqueue_fill"]);
    }

    #[test]
    fn syscall_names_come_from_the_running_arch() {
        let all = syscall_features();
        assert!(all.len() > 300, "{}", all.len());
        let getppid = all.iter().find(|(n, _)| n == "sys:getppid").unwrap();
        assert_eq!(getppid.1 as libc::c_long, libc::SYS_getppid);
    }

    #[test]
    fn filters_features_by_source() {
        let q = [Source::Qemu];
        assert!(Source::any_of(&q, "qemu:tap_send"));
        assert!(!Source::any_of(&q, "sys:read"));
        assert!(Source::any_of(&[Source::Strace], "sys:read"));
        assert!(Source::any_of(&[], "kvm:kvm_pio"));
        assert!(!Source::any_of(&[Source::Kvm], "other"));
    }

    #[test]
    fn rejects_empty_and_garbled_lists() {
        let err = parse_feature_list("f", "# nothing\n\n").unwrap_err();
        assert_eq!(err.to_string(), "f: the feature list is empty");
        let err = parse_feature_list("f", "qemu:a\nqemu:b qemu:c\n").unwrap_err();
        assert!(err.to_string().starts_with("f: line 2: "), "{err}");
        // Found by the features fuzz target: a lone CR is no line end for
        // `lines()`, and was echoed into the message as is.
        let err = parse_feature_list("f", "qemu:a\rqemu:b\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r"f: line 1: expected one feature name, got `qemu:a\rqemu:b`"
        );
    }
}
