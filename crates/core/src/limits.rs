//! Upper bounds on what vmwatch reads. A wrong path (`/dev/zero`, a huge
//! unrelated file) must fail with a sentence, not grow until the machine
//! runs out of memory. Each limit is far above what vmwatch itself writes.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Longest line (the header or a row) of a dataset file: 1,000,000 counts
/// of 20 digits plus their names fit; memory stays near twice this.
pub const MAX_LINE_BYTES: u64 = 64 << 20;

/// Most feature columns of a dataset file (QEMU declares ~5,000 probes,
/// Linux ~400 syscalls).
pub const MAX_FEATURE_COLUMNS: usize = 1_000_000;

/// Largest model file (pretty JSON, ~30 bytes per support-vector value:
/// e.g. 2,000 support vectors of 4,000 features).
pub const MAX_MODEL_BYTES: u64 = 256 << 20;

/// Largest executable whose USDT notes vmwatch reads (QEMU with debug
/// information is about 0.5 GiB).
pub const MAX_BINARY_BYTES: u64 = 4 << 30;

/// Largest feature list (one name per line).
pub const MAX_FEATURE_LIST_BYTES: u64 = 16 << 20;

/// `n` bytes for messages (in MiB when whole).
pub(crate) fn mib(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Reads all of `path`, `what` it is (e.g. "a model file"), failing when it
/// holds more than `limit` bytes. Devices and pipes are read only up to the
/// limit; memory never grows past it.
pub fn read_file(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let read_err = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let too_big = || {
        Error::Invalid(format!(
            "{} is larger than {}, the most {what} may be",
            path.display(),
            mib(limit)
        ))
    };
    let mut file = File::open(path).map_err(read_err)?;
    // A regular file's size is known up front (files in /proc say 0).
    let size = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.len());
    if size > limit {
        return Err(too_big());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut buf = Vec::with_capacity(size as usize);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        if buf.len() + n > limit {
            return Err(too_big());
        }
        // Grow geometrically but never past the limit (read_to_end would
        // double a 256 MiB buffer to 512 MiB).
        if buf.capacity() - buf.len() < n {
            let grow = buf.capacity().max(n).min(limit - buf.len());
            buf.reserve_exact(grow);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorMessage as _;

    #[test]
    fn reads_up_to_the_limit_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 100]).unwrap();
        assert_eq!(read_file(&p, 100, "a test file").unwrap().len(), 100);
        let err = read_file(&p, 99, "a test file").error_message();
        assert!(
            err.contains("is larger than 99 bytes, the most a test file may be"),
            "{err}"
        );
        // A device has no size: the limit applies while reading.
        let err = read_file(Path::new("/dev/zero"), 1 << 20, "a test file").error_message();
        assert!(err.contains("/dev/zero is larger than 1 MiB"), "{err}");
        assert!(read_file(&dir.path().join("none"), 1, "x")
            .error_message()
            .contains("cannot read"));
    }
}
