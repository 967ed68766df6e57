//! Errors of the BPF-free library: one variant per thing a caller can act
//! on, each rendering as one sentence without its cause; the cause is
//! `source()`, and [`chain`] (or anyhow's `{:#}` at the binary's edge)
//! prints the whole chain once.

use std::io;
use std::path::PathBuf;

/// Errors of vmwatch-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file could not be written (a full disk, a closed pipe: see the
    /// source's kind).
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another I/O operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A dataset file is not what vmwatch writes.
    #[error("{path} line {line}: {reason}")]
    Dataset {
        path: String,
        line: u64,
        reason: String,
    },
    /// A dataset to append to has other columns than the rows to add.
    #[error("{path} has other columns than the features counted now")]
    OtherColumns { path: PathBuf },
    /// A model file cannot be used.
    #[error("{path} is not a usable model: {reason}")]
    Model { path: String, reason: String },
    /// linfa could not train the one-class SVM.
    #[error("training the one-class SVM")]
    Svm {
        #[source]
        source: linfa_svm::SvmError,
    },
    /// plotters could not draw a figure.
    #[error("drawing {what}")]
    Plot {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A VM's QEMU lacks features the model relies on (they would read
    /// as zero): `monitor` refuses to judge it.
    #[error(
        "VM {} (PID {pid}): its QEMU lacks {} of the features the model relies on ({}); train \
         a model on this QEMU, or pass --allow-missing-features to judge it with them read as zero",
        shown(.vm), .features.len(), first_few(.features, 5)
    )]
    MissingFeatures {
        vm: String,
        pid: u32,
        features: Vec<String>,
    },
    /// Anything else that is wrong with the input, as one sentence.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn write(path: &std::path::Path, source: io::Error) -> Self {
        Error::Write {
            path: path.to_owned(),
            source,
        }
    }
}

/// Text read from an input (a CSV field, a probe name), for a message:
/// control characters and line separators are shown escaped (`\n`, `\r`,
/// `\u{1b}`), so the message stays one line and cannot drive the terminal.
pub fn shown(text: &str) -> String {
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

/// At most `n` names (escaped, see [`shown`]), comma separated, then how
/// many more: for one-line messages that name a long list.
pub fn first_few(names: &[String], n: usize) -> String {
    let listed: Vec<String> = names.iter().take(n).map(|s| shown(s)).collect();
    let mut out = listed.join(", ");
    if names.len() > n {
        out.push_str(&format!(" and {} more", names.len() - n));
    }
    out
}

/// An error and its causes in one line, `outer: cause: root` (what
/// anyhow's `{:#}` prints), for logs.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        // A transparent wrapper repeats its inner error's message.
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

/// For tests: the whole message ([`chain`]) of an error that must come.
#[cfg(test)]
pub(crate) trait ErrorMessage {
    /// The error's message; panics on `Ok`.
    fn error_message(self) -> String;
}

#[cfg(test)]
impl<T: std::fmt::Debug, E: std::error::Error + 'static> ErrorMessage
    for std::result::Result<T, E>
{
    fn error_message(self) -> String {
        chain(&self.unwrap_err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_cut_short() {
        let names: Vec<String> = (0..7).map(|i| format!("qemu:p{i}")).collect();
        assert_eq!(first_few(&names[..2], 5), "qemu:p0, qemu:p1");
        assert_eq!(first_few(&names, 3), "qemu:p0, qemu:p1, qemu:p2 and 4 more");
        assert_eq!(first_few(&["a\nb".to_string()], 1), r"a\nb");
    }

    #[test]
    fn shown_escapes_what_would_break_the_line() {
        assert_eq!(shown("qemu:tap_send"), "qemu:tap_send");
        assert_eq!(
            shown("a\nb\r\u{1b}[2J\u{85}\u{2028}é"),
            r"a\nb\r\u{1b}[2J\u{85}\u{2028}é"
        );
    }
}
