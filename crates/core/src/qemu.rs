//! Which QEMU a window was counted on: the build id and version of a QEMU
//! binary, read from the file without running it. Dataset rows carry them
//! (the `qemu_build_id` and `qemu_version` columns) and models list the
//! builds they were trained on, so `monitor` can tell a model from another
//! QEMU.

use serde::{Deserialize, Serialize};

use crate::error::shown;

/// The longest build id kept, in hex digits (GNU ld writes 40, a SHA-1;
/// `--build-id=0x…` takes any length).
pub const MAX_BUILD_ID_HEX: usize = 256;

/// The longest version string kept, in bytes.
pub const MAX_VERSION_BYTES: usize = 256;

/// What QEMU emulators print for `-version`, followed by the version
/// (QEMU_FULL_VERSION, e.g. `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)`) and a
/// newline; the literal lies in the binary's read-only data.
pub const VERSION_PREFIX: &[u8] = b"QEMU emulator version ";

/// One QEMU binary: its ELF build id (`.note.gnu.build-id`, lower-case
/// hex) and its version, each `None` when the binary does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QemuBuild {
    pub build_id: Option<String>,
    pub version: Option<String>,
}

impl QemuBuild {
    /// A build from a raw build id and the bytes that follow
    /// [`VERSION_PREFIX`] (see [`version_in`]).
    pub fn new(build_id: Option<&[u8]>, version: Option<String>) -> Self {
        Self {
            build_id: build_id
                .filter(|b| !b.is_empty() && b.len() * 2 <= MAX_BUILD_ID_HEX)
                .map(hex),
            version,
        }
    }

    /// Whether neither is known.
    pub fn is_unknown(&self) -> bool {
        self.build_id.is_none() && self.version.is_none()
    }

    /// Whether the build ids are known and equal: the same build.
    pub fn same_build(&self, other: &QemuBuild) -> bool {
        matches!((&self.build_id, &other.build_id), (Some(a), Some(b)) if a == b)
    }

    /// Checks what a file says about a build (a dataset field, a model's
    /// list): a build id is hex digits, at most [`MAX_BUILD_ID_HEX`]; a
    /// version at most [`MAX_VERSION_BYTES`] without control characters.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.build_id {
            check_build_id(id)?;
        }
        if let Some(v) = &self.version {
            check_version(v)?;
        }
        Ok(())
    }
}

/// `build 31e9b22e… (7.2.22 (Debian …))`, `build 31e9b22e…`, `version
/// 7.2.22 (no build id)` or `an unknown build`, for messages (escaped: it
/// may come from a file).
impl std::fmt::Display for QemuBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.build_id, &self.version) {
            (Some(id), Some(v)) => write!(f, "build {} ({})", shown(id), shown(v)),
            (Some(id), None) => write!(f, "build {}", shown(id)),
            (None, Some(v)) => write!(f, "version {} (no build id)", shown(v)),
            (None, None) => f.write_str("an unknown build"),
        }
    }
}

/// A build id field: hex digits only, not too long.
pub fn check_build_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_BUILD_ID_HEX || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "QEMU build id `{}` is not 1 to {MAX_BUILD_ID_HEX} hex digits",
            shown(id)
        ));
    }
    Ok(())
}

/// A version field: not too long, no control characters.
pub fn check_version(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_VERSION_BYTES || v.chars().any(char::is_control) {
        return Err(format!(
            "QEMU version `{}` is not 1 to {MAX_VERSION_BYTES} bytes of text",
            shown(v)
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The version after the first [`VERSION_PREFIX`] in `data` (up to the
/// newline or NUL that ends it): `None` when there is none, or when what
/// follows is not short printable UTF-8 text.
pub fn version_in(data: &[u8]) -> Option<String> {
    let at = find(data, VERSION_PREFIX)? + VERSION_PREFIX.len();
    let rest = &data[at..];
    let end = rest
        .iter()
        .take(MAX_VERSION_BYTES + 1)
        .position(|&b| b == b'\n' || b == 0)?;
    let v = std::str::from_utf8(&rest[..end]).ok()?.trim();
    check_version(v).ok()?;
    Some(v.to_string())
}

/// The first position of `needle` (non-empty) in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = hay.get(from..)?.iter().position(|&b| b == first) {
        let at = from + i;
        if hay.get(at + 1..at + needle.len()) == Some(tail) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// `builds` without repeats, in order of first appearance.
pub fn distinct<'a>(builds: impl IntoIterator<Item = &'a QemuBuild>) -> Vec<QemuBuild> {
    let mut out: Vec<QemuBuild> = Vec::new();
    for b in builds {
        if !out.contains(b) {
            out.push(b.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_the_banner() {
        let data = b"\0junk QEMU emulator version 7.2.22 (vmwatch, Debian 1:7.2+dfsg-7)\nCopyright";
        assert_eq!(
            version_in(data).as_deref(),
            Some("7.2.22 (vmwatch, Debian 1:7.2+dfsg-7)")
        );
        assert_eq!(
            version_in(b"QEMU emulator version 10.1.0\0").as_deref(),
            Some("10.1.0")
        );
        // A near miss first, then the real one.
        assert_eq!(
            version_in(b"QEMU emulator QEMU emulator version 9.2.0\n").as_deref(),
            Some("9.2.0")
        );
        for bad in [
            &b"no banner here"[..],
            b"QEMU emulator version ",
            b"QEMU emulator version 7.2",
            b"QEMU emulator version \n",
            b"QEMU emulator version 7.2\x01x\n",
            b"QEMU emulator version \xff\xfe\n",
        ] {
            assert_eq!(version_in(bad), None, "{bad:?}");
        }
        let long = [VERSION_PREFIX, &[b'7'; 300][..], b"\n"].concat();
        assert_eq!(version_in(&long), None);
    }

    #[test]
    fn builds_show_validate_and_compare() {
        let b = QemuBuild::new(Some(&[0x31, 0xe9, 0x0b]), Some("7.2.22".into()));
        assert_eq!(b.build_id.as_deref(), Some("31e90b"));
        assert_eq!(b.to_string(), "build 31e90b (7.2.22)");
        assert!(b.validate().is_ok());
        assert!(b.same_build(&QemuBuild::new(Some(&[0x31, 0xe9, 0x0b]), None)));
        assert!(!QemuBuild::default().same_build(&QemuBuild::default()));
        assert_eq!(QemuBuild::default().to_string(), "an unknown build");
        assert!(QemuBuild::new(Some(&[]), None).is_unknown());
        let bad = QemuBuild {
            build_id: Some("xyz".into()),
            version: None,
        };
        assert!(bad.validate().unwrap_err().contains("`xyz` is not"));
        let bad = QemuBuild {
            build_id: None,
            version: Some("a\nb".into()),
        };
        assert!(bad.validate().unwrap_err().contains(r"`a\nb`"));
    }

    #[test]
    fn builds_are_listed_once() {
        let a = QemuBuild::new(Some(&[1]), None);
        let b = QemuBuild::new(Some(&[2]), None);
        assert_eq!(distinct([&a, &b, &a]), [a, b]);
    }
}
