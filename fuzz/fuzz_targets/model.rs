//! Model files (JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ndarray::Array2;
use vmwatch_core::model::Model;
use vmwatch_fuzz::assert_one_sentence;

fuzz_target!(|data: &[u8]| {
    match Model::from_json("model.json", data) {
        // A model that loads can score a window.
        Ok(m) => {
            let _ = m.decisions(Array2::zeros((1, m.features.len())).view());
        }
        Err(e) => assert_one_sentence(&e),
    }
});
