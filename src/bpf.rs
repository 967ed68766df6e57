//! Generated BPF skeletons (one per `bpf/*.bpf.c`, built by `build.rs`).

#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, missing_docs)]
pub mod usdt_count {
    include!(concat!(env!("OUT_DIR"), "/usdt_count.skel.rs"));
}

#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, missing_docs)]
pub mod syscall_count {
    include!(concat!(env!("OUT_DIR"), "/syscall_count.skel.rs"));
}

#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, missing_docs)]
pub mod kvm_count {
    include!(concat!(env!("OUT_DIR"), "/kvm_count.skel.rs"));
}
