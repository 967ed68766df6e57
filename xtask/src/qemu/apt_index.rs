//! apt's private index of QEMU 10.0's source packages: `<cache>/qemu/apt-10.0/`.
//!
//! QEMU 10.0 is Debian 13 (trixie)'s QEMU, also in bookworm-backports. Its
//! `deb-src` entries are not added to the system's apt sources: there, `apt-get
//! source qemu` (without a version) would then fetch 10.0 instead of bookworm's
//! 7.2 for every tool and every checkout of this project that asks apt for "the"
//! qemu source — including older xtask code, whose 7.2 cache key would change and
//! whose next build would fail. Instead apt reads this directory's configuration
//! (`APT_CONFIG`): the sources below, their own lists and cache; the system's
//! apt.conf.d (proxies and the like) and keyrings still apply.
//!
//! Suites: `bookworm-backports` (as the issue asks) and trixie with its updates
//! and security suites, whose `.dsc` files the mirror keeps: the mirror here lists
//! backports' `1:10.0.2+ds-2+deb13u1~bpo12+1` but no longer serves its `.dsc`.
//! The newest 10.0 version of all of them is built (see `mod.rs`).

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::deps;
use crate::util::{self, note};

/// Suites of the Debian mirror the 10.0 sources come from.
pub const SUITES: &[&str] = &["bookworm-backports", "trixie", "trixie-updates"];
/// Suites of the security mirror.
pub const SECURITY_SUITES: &[&str] = &["trixie-security"];

pub struct Index {
    dir: PathBuf,
}

impl Index {
    /// The index under `root` (`<cache>/qemu`); nothing is written yet.
    pub fn new(root: &Path) -> Index {
        Index {
            dir: root.join("apt-10.0"),
        }
    }

    /// The apt configuration file (for `APT_CONFIG`).
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("apt.conf")
    }

    /// Makes `cmd` (apt-get, apt-cache) use this index.
    pub fn configure(&self, cmd: &mut Command) {
        cmd.env("APT_CONFIG", self.config_file());
    }

    /// Writes the configuration and sources (from the system's `deb` entries) and
    /// runs `apt-get update` on them.
    pub fn update(&self) -> Result<()> {
        let sources = deps::qemu10_sources(SUITES, SECURITY_SUITES)?;
        let parts = self.dir.join("sources.list.d");
        let lists = self.dir.join("lists");
        let cache = self.dir.join("cache");
        for d in [
            &parts,
            &lists.join("partial"),
            &cache.join("archives/partial"),
        ] {
            fs::create_dir_all(d).with_context(|| format!("could not create {}", d.display()))?;
        }
        let sources_file = parts.join("qemu-10.0.sources");
        util::write_atomic(&sources_file, sources.as_bytes())
            .with_context(|| format!("could not write {}", sources_file.display()))?;
        let conf = format!(
            "// Written by `cargo xtask qemu` (vmwatch): apt's private index of QEMU 10.0's sources.\n\
             Dir::Etc::SourceList \"/dev/null\";\n\
             Dir::Etc::SourceParts \"{}\";\n\
             Dir::State::Lists \"{}\";\n\
             Dir::Cache \"{}\";\n\
             // Root downloads into its own cache, which apt's _apt user may not read.\n\
             APT::Sandbox::User \"root\";\n",
            parts.display(),
            lists.display(),
            cache.display()
        );
        util::write_atomic(&self.config_file(), conf.as_bytes())
            .with_context(|| format!("could not write {}", self.config_file().display()))?;
        note(format!(
            "refreshing the private apt index of QEMU 10.0's sources ({}: {})",
            self.dir.display(),
            SUITES
                .iter()
                .chain(SECURITY_SUITES)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut cmd = deps::apt_get();
        self.configure(&mut cmd);
        cmd.arg("update");
        util::run(&mut cmd).with_context(|| {
            format!(
                "could not refresh the private apt index {} (`apt-get update`)",
                self.dir.display()
            )
        })
    }
}

/// Compares two Debian versions as dpkg does (`dpkg --compare-versions`): epoch,
/// then upstream version, then revision, each with `~` sorting before anything.
pub fn debian_version_cmp(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (u64, String, String) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream.to_string(), revision.to_string())
    };
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| verrevcmp(ra.as_bytes(), rb.as_bytes()))
}

/// dpkg's `order`: digits 0, letters their code, `~` -1, other characters after
/// the letters, the end 0.
fn order(c: Option<&u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(*c),
        Some(b'~') => -1,
        Some(c) => i32::from(*c) + 256,
    }
}

/// dpkg's `verrevcmp`: alternating non-digit and digit runs.
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i)), order(b.get(j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions() {
        use Ordering::*;
        let cases = [
            (
                "1:10.0.13+ds-0+deb13u1",
                "1:10.0.2+ds-2+deb13u1~bpo12+1",
                Greater,
            ),
            (
                "1:10.0.2+ds-2+deb13u1",
                "1:10.0.2+ds-2+deb13u1~bpo12+1",
                Greater,
            ),
            ("1:7.2+dfsg-7+deb12u18", "1:7.2+dfsg-7+deb12u15", Greater),
            ("1:7.2+dfsg-7", "10.0-1", Greater),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1.0-1", "1.0-1", Equal),
            ("1.0", "1.0-0", Equal),
            ("1.01-1", "1.1-1", Equal),
            ("1.0a-1", "1.0-1", Greater),
            ("1.0+x", "1.0a", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(debian_version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(debian_version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
