//! Which probes of a QEMU build their semaphores do not gate, remembered
//! across runs (`RUN_DIR/ungated/BUILD-ID`, one probe name per line). It is
//! a property of the build's code (tracetool's dtrace backend calls most
//! probes unconditionally), found by the governor the first time a probe
//! fires while its semaphore is down; the next vmwatch on the same build
//! puts those probes on per-process links from the start, so a burst of one
//! is thinned at the next phase instead of a phase later. The file only
//! decides which links a probe is counted on, never what is counted: a
//! stale or wrong entry costs a link, not a count.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::attach::semaphores::RUN_DIR;

/// The file of `build_id` (hex, as read from the ELF note), if it is one.
fn path_of(build_id: &str) -> Option<PathBuf> {
    let hex = !build_id.is_empty()
        && build_id.len() <= 128
        && build_id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| PathBuf::from(RUN_DIR).join("ungated").join(build_id))
}

/// Probe names of `build_id` known not to be gated (none when unknown).
pub fn known(build_id: Option<&str>) -> BTreeSet<String> {
    let Some(path) = build_id.and_then(path_of) else {
        return BTreeSet::new();
    };
    // Only from a folder no other user can write to.
    if !path.parent().is_some_and(|d| d.is_dir())
        || vmwatch_core::atomic::private_dir(path.parent().expect("has a parent")).is_err()
    {
        return BTreeSet::new();
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => {
            tracing::debug!("reading {}: {e}", path.display());
            BTreeSet::new()
        }
    }
}

/// Adds `names` to what is known of `build_id`.
pub fn remember(build_id: Option<&str>, names: &[&str]) {
    let Some(path) = build_id.and_then(path_of) else {
        return;
    };
    let mut all = known(build_id);
    let before = all.len();
    all.extend(names.iter().map(|n| n.to_string()));
    if all.len() == before {
        return;
    }
    let dir = path.parent().expect("has a parent");
    let written = vmwatch_core::atomic::private_dir(std::path::Path::new(RUN_DIR))
        .and_then(|()| vmwatch_core::atomic::private_dir(dir))
        .and_then(|()| {
            let mut text = String::from(
                "# Probes of this QEMU build that fire while their semaphore is down (vmwatch's \
                 cost governor).\n",
            );
            for n in &all {
                text.push_str(n);
                text.push('\n');
            }
            vmwatch_core::atomic::write(&path, text.as_bytes())
        });
    if let Err(e) = written {
        tracing::debug!(
            "remembering ungated probes in {}: {}",
            path.display(),
            vmwatch_core::error::chain(&e)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_build_ids_name_a_file() {
        assert!(path_of("0043bc7ff7f3c3dbcb5f5908673b033f2de1f5df").is_some());
        assert!(path_of("").is_none());
        assert!(path_of("../../etc/passwd").is_none());
        assert!(path_of("abc/def").is_none());
        assert!(known(None).is_empty());
    }
}
