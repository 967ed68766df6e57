//! The shared libraries of a dynamically linked program, from `ldd`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Every shared object `binary` needs (the whole closure, dynamic loader
/// included), as absolute paths on this host.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let shown = binary.display();
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("could not run `ldd {shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // ldd exits 1 for a static binary ("not a dynamic executable").
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("`ldd {shown}` failed ({}): {}", out.status, stderr.trim());
    }
    parse(&stdout).with_context(|| format!("cannot resolve the libraries of {shown}"))
}

/// Parses `ldd` output. Lines look like
/// `libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x…)` (a library),
/// `/lib64/ld-linux-x86-64.so.2 (0x…)` (the loader) or
/// `linux-vdso.so.1 (0x…)` (provided by the kernel, skipped).
pub fn parse(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line == "statically linked" {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("library {} not found", name.trim());
                }
                // `=> (0x…)` (empty target) happens for the vDSO on some systems.
                match target.split_whitespace().next() {
                    Some(p) if p.starts_with('/') => p,
                    _ => continue,
                }
            }
            None => match line.split_whitespace().next() {
                Some(p) if p.starts_with('/') => p,
                _ => continue,
            },
        };
        let path = PathBuf::from(path);
        if !libs.contains(&path) {
            libs.push(path);
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_output() {
        let text = "\
\tlinux-vdso.so.1 (0x00007ffd4a1f0000)
\tlibpcap.so.0.8 => /lib/x86_64-linux-gnu/libpcap.so.0.8 (0x00007f4bda58e000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4bda1e2000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f4bda622000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4bda1e2000)
";
        assert_eq!(
            parse(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libpcap.so.0.8"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn missing_and_static() {
        let err = parse("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(format!("{err:#}").contains("libfoo.so.1"));
        assert!(parse("\tstatically linked\n").unwrap().is_empty());
        assert!(parse("\tlinux-vdso.so.1 =>  (0x00007ffd)\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn real_binary() {
        let libs = libraries(Path::new("/bin/sh")).unwrap();
        assert!(libs.iter().any(|p| p.to_string_lossy().contains("libc.so")));
    }
}
