//! `cargo xtask deps`: the Debian packages vmwatch needs, and a `deb-src` entry so
//! that `apt-get source qemu` works. Also the `deb-src` entries of QEMU 10.0's
//! private apt index ([`qemu10_sources`], used by `qemu/apt_index.rs`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, note};

/// The package list, relative to the repository root.
pub const PACKAGES_FILE: &str = "xtask/packages.txt";

const APT_SOURCES_LIST: &str = "/etc/apt/sources.list";
const APT_SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The file `deps` writes when no `deb-src` entry exists yet.
const VMWATCH_SRC: &str = "/etc/apt/sources.list.d/vmwatch-src.sources";
/// The Debian release of the machine: its `deb` entries are the mirrors QEMU 10.0's
/// sources are fetched from.
const RELEASE: &str = "bookworm";

/// The parsed package list.
#[derive(Debug, Default)]
pub struct Packages {
    /// Every package, in file order, without duplicates.
    pub all: Vec<String>,
    /// The packages of section `qemu` (part of every QEMU recipe hash).
    pub qemu: Vec<String>,
    /// The packages of section `qemu10`: what QEMU 10.0 needs on top of `qemu`
    /// (part of the 10.0 recipe hashes only).
    pub qemu10: Vec<String>,
}

pub fn packages_path() -> PathBuf {
    util::repo_root().join(PACKAGES_FILE)
}

pub fn read_packages() -> Result<Packages> {
    let path = packages_path();
    let text = fs::read_to_string(&path)
        .with_context(|| format!("could not read the package list {}", path.display()))?;
    parse_packages(&text).with_context(|| format!("bad package list {}", path.display()))
}

fn parse_packages(text: &str) -> Result<Packages> {
    let mut pk = Packages::default();
    let mut seen = BTreeSet::new();
    let mut section = String::new();
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if let Some(name) = trimmed
            .strip_prefix('#')
            .map(str::trim)
            .and_then(|c| c.strip_prefix("section:"))
        {
            section = name.trim().to_string();
            continue;
        }
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let valid = line
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c));
        if !valid {
            bail!(
                "line {}: {line:?} is not a single Debian package name",
                n + 1
            );
        }
        match section.as_str() {
            "qemu" => pk.qemu.push(line.to_string()),
            "qemu10" => pk.qemu10.push(line.to_string()),
            _ => {}
        }
        if seen.insert(line.to_string()) {
            pk.all.push(line.to_string());
        }
    }
    if pk.all.is_empty() {
        bail!("it lists no package");
    }
    Ok(pk)
}

/// What `ensure` did.
pub struct Outcome {
    /// `apt-get update` ran.
    pub updated: bool,
}

/// Makes sure a `deb-src` entry exists and every listed package is installed.
pub fn ensure() -> Result<Outcome> {
    let packages = read_packages()?;
    let root = util::is_root()?;
    let mut need_update = false;

    if !deb_src_configured()? {
        if !root {
            bail!(
                "apt has no deb-src entry (needed for `apt-get source qemu`); run `cargo xtask deps` as root to add {VMWATCH_SRC}"
            );
        }
        add_deb_src()?;
        need_update = true;
    } else if !source_lists_present()? {
        // deb-src is configured but `apt-get update` has not fetched the Sources yet.
        need_update = root;
    }

    let missing = missing_packages(&packages.all)?;
    if !missing.is_empty() {
        if !root {
            bail!(
                "{} required package(s) are not installed: {}; install them as root (`cargo xtask deps`)",
                missing.len(),
                missing.join(" ")
            );
        }
        need_update = true;
    }

    if need_update {
        apt_update()?;
    }
    if !missing.is_empty() {
        note(format!(
            "installing {} missing package(s): {}",
            missing.len(),
            missing.join(" ")
        ));
        let mut cmd = apt_get();
        cmd.args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        util::run(&mut cmd).context("could not install the required packages")?;
        let still = missing_packages(&packages.all)?;
        if !still.is_empty() {
            bail!(
                "apt-get install succeeded but these packages are still not installed: {}",
                still.join(" ")
            );
        }
    } else {
        note(format!(
            "all {} packages of {PACKAGES_FILE} are installed",
            packages.all.len()
        ));
    }
    Ok(Outcome {
        updated: need_update,
    })
}

/// `apt-get` with the environment of a non-interactive install.
pub fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").arg("-q");
    cmd
}

pub fn apt_update() -> Result<()> {
    let mut cmd = apt_get();
    cmd.arg("update");
    util::run(&mut cmd).context("could not refresh the package lists (`apt-get update`)")
}

/// Packages of `wanted` whose dpkg status is not `install ok installed`.
pub fn missing_packages(wanted: &[String]) -> Result<Vec<String>> {
    // One dpkg-query call; it exits 1 when some package is unknown, which is fine:
    // those are simply absent from its output.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(wanted)
        .output()
        .context("could not run dpkg-query to check installed packages")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name)
        .collect();
    Ok(wanted
        .iter()
        .filter(|p| !installed.contains(p.as_str()))
        .cloned()
        .collect())
}

/// Installed version of a package, if installed.
pub fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// All apt source files: sources.list, sources.list.d/*.list and *.sources.
fn source_files() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if Path::new(APT_SOURCES_LIST).is_file() {
        files.push(PathBuf::from(APT_SOURCES_LIST));
    }
    match fs::read_dir(APT_SOURCES_DIR) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.with_context(|| format!("could not list {APT_SOURCES_DIR}"))?;
                let path = entry.path();
                let ext = path.extension().and_then(|e| e.to_str());
                if matches!(ext, Some("list" | "sources")) && path.is_file() {
                    files.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("could not list {APT_SOURCES_DIR}")),
    }
    files.sort();
    Ok(files)
}

/// True if any apt source file has an enabled `deb-src` entry.
pub fn deb_src_configured() -> Result<bool> {
    for file in source_files()? {
        let text = fs::read_to_string(&file)
            .with_context(|| format!("could not read {}", file.display()))?;
        let found = if file.extension().and_then(|e| e.to_str()) == Some("sources") {
            deb822_stanzas(&text)
                .iter()
                .any(|s| s.types().iter().any(|t| t == "deb-src") && s.enabled())
        } else {
            text.lines()
                .any(|l| l.split_whitespace().next() == Some("deb-src"))
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True if `apt-get update` has fetched at least one Sources index.
fn source_lists_present() -> Result<bool> {
    let dir = "/var/lib/apt/lists";
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("could not list {dir}")),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("could not list {dir}"))?;
        if entry
            .file_name()
            .to_string_lossy()
            .contains("_source_Sources")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One deb822 stanza: fields in order, each with its raw (possibly multi-line) value.
struct Stanza {
    fields: Vec<(String, String)>,
}

impl Stanza {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn types(&self) -> Vec<String> {
        self.get("Types")
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn enabled(&self) -> bool {
        !matches!(self.get("Enabled").map(str::trim), Some("no"))
    }
}

fn deb822_stanzas(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !fields.is_empty() {
                stanzas.push(Stanza {
                    fields: std::mem::take(&mut fields),
                });
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line);
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    if !fields.is_empty() {
        stanzas.push(Stanza { fields });
    }
    stanzas
}

/// Writes VMWATCH_SRC: one `deb-src` stanza per `deb` stanza of debian.sources (same
/// URIs, Suites, Components, Signed-By), or per `deb` line of sources.list.
fn add_deb_src() -> Result<()> {
    let mut out = String::from(
        "# Written by `cargo xtask deps` (vmwatch): source packages, for `apt-get source qemu`.\n",
    );
    let mut count = 0;
    if Path::new(DEBIAN_SOURCES).is_file() {
        let text = fs::read_to_string(DEBIAN_SOURCES)
            .with_context(|| format!("could not read {DEBIAN_SOURCES}"))?;
        for stanza in deb822_stanzas(&text) {
            if !stanza.enabled() || !stanza.types().iter().any(|t| t == "deb") {
                continue;
            }
            out.push_str("\nTypes: deb-src\n");
            for key in ["URIs", "Suites", "Components", "Signed-By"] {
                if let Some(value) = stanza.get(key) {
                    out.push_str(&format!("{key}: {value}\n"));
                }
            }
            count += 1;
        }
    } else if Path::new(APT_SOURCES_LIST).is_file() {
        let text = fs::read_to_string(APT_SOURCES_LIST)
            .with_context(|| format!("could not read {APT_SOURCES_LIST}"))?;
        for line in text.lines() {
            if let Some(stanza) = one_line_to_deb822(line) {
                out.push_str(&stanza);
                count += 1;
            }
        }
    }
    if count == 0 {
        bail!(
            "cannot add a deb-src entry: found no `deb` entry in {DEBIAN_SOURCES} or {APT_SOURCES_LIST} to copy"
        );
    }
    note(format!(
        "adding {VMWATCH_SRC} ({count} deb-src entr{})",
        if count == 1 { "y" } else { "ies" }
    ));
    util::write_atomic(Path::new(VMWATCH_SRC), out.as_bytes())
        .with_context(|| format!("could not write {VMWATCH_SRC}"))
}

/// The deb822 `deb-src` stanzas of QEMU 10.0's private apt index: `suites` on the
/// mirror of the system's `deb` entry of bookworm, `security_suites` on the mirror
/// of its bookworm-security entry (skipped when there is none), with their
/// Components and Signed-By.
pub fn qemu10_sources(suites: &[&str], security_suites: &[&str]) -> Result<String> {
    let (text, deb822, file) = if Path::new(DEBIAN_SOURCES).is_file() {
        let text = fs::read_to_string(DEBIAN_SOURCES)
            .with_context(|| format!("could not read {DEBIAN_SOURCES}"))?;
        (text, true, DEBIAN_SOURCES)
    } else if Path::new(APT_SOURCES_LIST).is_file() {
        let text = fs::read_to_string(APT_SOURCES_LIST)
            .with_context(|| format!("could not read {APT_SOURCES_LIST}"))?;
        (text, false, APT_SOURCES_LIST)
    } else {
        bail!("cannot set up QEMU 10.0's sources: neither {DEBIAN_SOURCES} nor {APT_SOURCES_LIST} exists");
    };
    let mut out =
        String::from("# Written by `cargo xtask qemu` (vmwatch): QEMU 10.0's source packages.\n");
    let main = src_stanza_like(&text, deb822, RELEASE, &suites.join(" ")).with_context(|| {
        format!("cannot set up QEMU 10.0's sources: {file} has no `deb` entry of {RELEASE} to take the mirror from")
    })?;
    out.push_str(&main);
    if !security_suites.is_empty() {
        let security = format!("{RELEASE}-security");
        if let Some(s) = src_stanza_like(&text, deb822, &security, &security_suites.join(" ")) {
            out.push_str(&s);
        }
    }
    Ok(out)
}

/// A deb822 `deb-src` stanza of `suites` with the URI, Components and Signed-By of
/// the first enabled `deb` entry of suite `like` in `text` (deb822 or one-line).
fn src_stanza_like(text: &str, deb822: bool, like: &str, suites: &str) -> Option<String> {
    let (uri, components, signed_by) = if deb822 {
        let st = deb822_stanzas(text).into_iter().find(|s| {
            s.enabled()
                && s.types().iter().any(|t| t == "deb")
                && s.get("Suites")
                    .is_some_and(|v| v.split_whitespace().any(|x| x == like))
        })?;
        // A stanza may list several mirrors; the first one is enough.
        let uri = st.get("URIs")?.split_whitespace().next()?.to_string();
        (
            uri,
            st.get("Components").map(str::to_string),
            st.get("Signed-By").map(str::to_string),
        )
    } else {
        text.lines().find_map(|l| {
            let s = one_line_to_deb822(l)?;
            let field = |k: &str| {
                s.lines()
                    .find_map(|x| x.strip_prefix(k).map(|v| v.trim().to_string()))
            };
            (field("Suites:")? == like).then(|| {
                (
                    field("URIs:").unwrap_or_default(),
                    field("Components:"),
                    field("Signed-By:"),
                )
            })
        })?
    };
    let mut s = format!("\nTypes: deb-src\nURIs: {uri}\nSuites: {suites}\n");
    if let Some(c) = components {
        s.push_str(&format!("Components: {c}\n"));
    }
    if let Some(k) = signed_by {
        s.push_str(&format!("Signed-By: {k}\n"));
    }
    Some(s)
}

/// `deb [signed-by=K] URI SUITE COMP…` → a deb822 `deb-src` stanza.
fn one_line_to_deb822(line: &str) -> Option<String> {
    let line = line.split('#').next()?.trim();
    let rest = line.strip_prefix("deb ")?.trim();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let (opts, after) = r.split_once(']')?;
            (opts.trim(), after.trim())
        }
        None => ("", rest),
    };
    let mut words = rest.split_whitespace();
    let uri = words.next()?;
    let suite = words.next()?;
    let components: Vec<&str> = words.collect();
    let mut s = format!("\nTypes: deb-src\nURIs: {uri}\nSuites: {suite}\n");
    if !components.is_empty() {
        s.push_str(&format!("Components: {}\n", components.join(" ")));
    }
    for opt in options.split_whitespace() {
        if let Some(key) = opt.strip_prefix("signed-by=") {
            s.push_str(&format!("Signed-By: {key}\n"));
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_sections() {
        let pk = parse_packages(
            "# top\nclang # BPF\n\n# section: qemu\nmeson\nclang\n# section: other\nstrace\n",
        )
        .expect("valid list");
        assert_eq!(pk.all, ["clang", "meson", "strace"]);
        assert_eq!(pk.qemu, ["meson", "clang"]);
        assert!(pk.qemu10.is_empty());
        let pk = parse_packages("# section: qemu\nmeson\n# section: qemu10\npython3-venv\n")
            .expect("valid list");
        assert_eq!(pk.qemu, ["meson"]);
        assert_eq!(pk.qemu10, ["python3-venv"]);
        assert!(parse_packages("two words\n").is_err());
        assert!(parse_packages("# nothing\n").is_err());
    }

    #[test]
    fn deb822() {
        let text = "Types: deb\n# comment\nURIs: http://x/debian\nSuites: a b\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nEnabled: no\nURIs: u\n";
        let st = deb822_stanzas(text);
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].get("suites"), Some("a b"));
        assert!(st[0].enabled());
        assert!(!st[1].enabled());
        assert_eq!(st[1].types(), ["deb-src"]);
    }

    #[test]
    fn one_line() {
        let s = one_line_to_deb822(
            "deb [arch=amd64 signed-by=/k.gpg] http://x/debian bookworm main contrib",
        )
        .expect("a deb line");
        assert!(s.contains("URIs: http://x/debian\n"));
        assert!(s.contains("Suites: bookworm\n"));
        assert!(s.contains("Components: main contrib\n"));
        assert!(s.contains("Signed-By: /k.gpg\n"));
        assert!(one_line_to_deb822("deb-src http://x b main").is_none());
    }

    #[test]
    fn qemu10_source_stanzas() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            src_stanza_like(deb822, true, "bookworm", "bookworm-backports").as_deref(),
            Some("\nTypes: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
        );
        let list = "deb http://sec/debian-security bookworm-security main\ndeb [signed-by=/k.gpg] http://x/debian bookworm main contrib\n";
        assert_eq!(
            src_stanza_like(list, false, "bookworm", "bookworm-backports").as_deref(),
            Some("\nTypes: deb-src\nURIs: http://x/debian\nSuites: bookworm-backports\nComponents: main contrib\nSigned-By: /k.gpg\n")
        );
        assert!(src_stanza_like(
            "deb http://x/debian trixie main\n",
            false,
            "bookworm",
            "bookworm-backports"
        )
        .is_none());
        assert_eq!(
            src_stanza_like(deb822, true, "bookworm-security", "trixie-security").as_deref(),
            Some("\nTypes: deb-src\nURIs: http://deb.debian.org/debian-security\nSuites: trixie-security\nComponents: main\n")
        );
    }
}
