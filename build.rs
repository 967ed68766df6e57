//! Compiles every `bpf/*.bpf.c` into a libbpf-rs skeleton in `OUT_DIR`.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    // Debian keeps <asm/types.h> under the multiarch directory.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");

    println!("cargo:rerun-if-changed=bpf");
    let mut sources: Vec<PathBuf> = fs::read_dir("bpf")
        .expect("bpf/ directory exists")
        .map(|e| e.expect("readable bpf/ entry").path())
        .collect();
    sources.sort();
    for path in &sources {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for src in sources
        .iter()
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".bpf.c")))
    {
        let stem = src
            .file_name()
            .and_then(OsStr::to_str)
            .and_then(|n| n.strip_suffix(".bpf.c"))
            .expect("bpf source named NAME.bpf.c");
        let skel = out.join(format!("{stem}.skel.rs"));
        SkeletonBuilder::new()
            .source(src)
            .clang_args([
                OsStr::new(&multiarch),
                OsStr::new("-Wall"),
                OsStr::new("-Ibpf"),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building BPF skeleton for {}: {e:#}", src.display()));
    }
}
