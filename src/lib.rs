//! vmwatch: per-VM behaviour profiles of QEMU/KVM guests from the host.
//!
//! Data flows one way: ELF probe discovery ([`stapsdt`]) → attach and count
//! in the kernel ([`collector`]) → window drain ([`window`]) → feature rows
//! ([`dataset`]).

pub mod atomic;
pub mod bpf;
pub mod collector;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod features;
pub mod kvm;
pub mod limits;
pub mod model;
pub mod plots;
pub mod procs;
pub mod select;
pub mod semaphores;
pub mod session;
pub mod signals;
pub mod stapsdt;
pub mod strace;
pub mod train;
pub mod window;

pub use error::{Error, Result};
