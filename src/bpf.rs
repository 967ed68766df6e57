//! The generated BPF skeleton of `bpf/vmwatch.bpf.c` (built by `build.rs`
//! into `OUT_DIR`).

#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, missing_docs)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/vmwatch.skel.rs"));
}

pub use skel::*;
