//! The library's error type: one variant per thing that can go wrong, each
//! rendering as one sentence that names the cause.

use std::io;
use std::path::PathBuf;

use crate::procs::Skipped;

/// Errors of the vmwatch library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an ELF file vmwatch can read: {reason}")]
    Elf { path: PathBuf, reason: String },
    #[error(
        "{path} has no USDT probes (no .note.stapsdt section): QEMU must be built with the \
         `dtrace` trace backend (configure --enable-trace-backends=dtrace)"
    )]
    NoProbes { path: PathBuf },
    #[error("{path} has no USDT probes of provider `{provider}`")]
    NoProviderProbes { path: PathBuf, provider: String },
    #[error("no process with PID {0}")]
    NoSuchProcess(u32),
    #[error("PID {0} is a kernel thread, not a QEMU process")]
    KernelThread(u32),
    #[error("PID {0} has exited (zombie, not yet reaped by its parent)")]
    Zombie(u32),
    /// `skipped` renders as a parenthesised note (or nothing).
    #[error("no running QEMU process has the VM name `{name}`{skipped}")]
    NoSuchVm { name: String, skipped: Skipped },
    #[error("no {}QEMU process is running{skipped}", .skipped.usable())]
    NoQemu { skipped: Skipped },
    #[error("{what} needs root: {}", crate::procs::hidden_from(*.hidden, *.uid))]
    NeedsRoot {
        what: String,
        hidden: usize,
        uid: u32,
    },
    #[error(
        "{what} needs root or CAP_BPF + CAP_PERFMON (and CAP_SYS_ADMIN for uprobes): {source}"
    )]
    Permission {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Text read from an input (a CSV field, a probe name), for a message:
/// control characters and line separators are shown escaped (`\n`, `\r`,
/// `\u{1b}`), so the message stays one line and cannot drive the terminal.
pub(crate) fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Error {
    /// Wraps a libbpf error, telling a missing privilege apart from the rest.
    pub(crate) fn bpf(what: impl Into<String>, source: libbpf_rs::Error) -> Self {
        let what = what.into();
        match source.kind() {
            libbpf_rs::ErrorKind::PermissionDenied => Error::Permission { what, source },
            _ => Error::Bpf { what, source },
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_escapes_what_would_break_the_line() {
        assert_eq!(shown("qemu:tap_send"), "qemu:tap_send");
        assert_eq!(
            shown("a\nb\r\u{1b}[2J\u{85}\u{2028}é"),
            r"a\nb\r\u{1b}[2J\u{85}\u{2028}é"
        );
    }
}
