//! vmwatch without BPF: everything after a window is drained, shared by the
//! `vmwatch` binary, its host agent, `cargo xtask`, the tests and benches.
//!
//! Data flows one way: feature names ([`features`]) → rows in dataset files
//! ([`dataset`]) → selection ([`select`]) → model ([`model`], trained by
//! [`train`], judged by [`eval`]) → verdicts ([`verdict`]); [`plots`] draws
//! the figures. It links no C library, so it builds before
//! `cargo xtask deps` has installed clang and libelf.

pub mod arguments;
pub mod atomic;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod features;
pub mod govern;
pub mod limits;
pub mod model;
pub mod plots;
pub mod qemu;
pub mod select;
pub mod train;
pub mod verdict;
pub mod window;

pub use error::{Error, Result};
