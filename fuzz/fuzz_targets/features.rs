//! Feature lists (one name per line). `read_feature_list` refuses bytes
//! that are not UTF-8; the parser sees text, here the lossy decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmwatch_core::features::parse_feature_list;
use vmwatch_fuzz::assert_one_sentence;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = parse_feature_list("features.txt", &text) {
        assert_one_sentence(&e);
    }
});
