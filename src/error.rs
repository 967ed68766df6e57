//! The library's error type: one variant per thing that can go wrong, each
//! rendering as one sentence; a cause is `source()`, printed once by the
//! chain (`vmwatch_core::error::chain`, anyhow's `{:#}` in the binary).

use std::io;
use std::path::PathBuf;

use crate::discover::procs::Skipped;

/// Errors of the vmwatch library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("{what} needs root: {}", crate::discover::procs::hidden_from(*.hidden, *.uid))]
    NeedsRoot {
        what: String,
        hidden: usize,
        uid: u32,
    },
    #[error("{what} needs root or CAP_BPF + CAP_PERFMON (and CAP_SYS_ADMIN for uprobes)")]
    Permission {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what} needs root or CAP_PERFMON, and ptrace access to the process")]
    PerfPermission {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Perf {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// An error of the BPF-free library (datasets, models, feature lists),
    /// and the I/O errors both share (`Error::read`, `Error::io`).
    #[error(transparent)]
    Core(#[from] vmwatch_core::Error),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a libbpf error, telling a missing privilege apart from the rest.
    pub(crate) fn bpf(what: impl Into<String>, source: libbpf_rs::Error) -> Self {
        let what = what.into();
        match source.kind() {
            libbpf_rs::ErrorKind::PermissionDenied => Error::Permission { what, source },
            _ => Error::Bpf { what, source },
        }
    }

    /// Wraps a `perf_event_open` (or perf read) error, telling a missing
    /// privilege apart, and saying what a full descriptor table needs.
    pub(crate) fn perf(what: impl Into<String>, source: io::Error) -> Self {
        let what = what.into();
        match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Error::PerfPermission { what, source },
            Some(libc::EMFILE | libc::ENFILE) => Error::Perf {
                what: format!(
                    "{what} (each watched thread needs four file descriptors: raise the \
                     open-file limit, e.g. LimitNOFILE= of the systemd unit)"
                ),
                source,
            },
            _ => Error::Perf { what, source },
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Core(vmwatch_core::Error::Io {
            what: what.into(),
            source,
        })
    }

    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Core(vmwatch_core::Error::Read {
            path: path.into(),
            source,
        })
    }
}
