//! The SDT notes (`.note.stapsdt`) of an ELF file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmwatch::discover::stapsdt::UsdtBinary;
use vmwatch_fuzz::assert_one_sentence;

fuzz_target!(|data: &[u8]| {
    match UsdtBinary::parse(Path::new("qemu-system-x86_64"), data) {
        Ok(b) => {
            let _ = b.probes();
            let _ = b.nop5_sites();
        }
        Err(e) => assert_one_sentence(&e),
    }
});
