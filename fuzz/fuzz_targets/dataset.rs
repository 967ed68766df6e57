//! Dataset files: CSV or gzip-compressed CSV (told apart by magic bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmwatch_core::dataset::Table;
use vmwatch_fuzz::assert_one_sentence;

fuzz_target!(|data: &[u8]| {
    match Table::from_reader("input.csv", data) {
        // What train and detect do next with a table.
        Ok(t) => {
            let _ = t.mean_rates(&t.features);
            let _ = Table::nonzero_features(&[&t], &[]);
        }
        Err(e) => assert_one_sentence(&e),
    }
});
