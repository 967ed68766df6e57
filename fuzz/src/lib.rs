//! What every fuzz target asserts besides "no panic": an error is one
//! sentence (the binary prints it as `vmwatch: {sentence}`).

/// Unicode's mandatory line breaks (LF, CR, VT, FF, NEL, LS, PS).
const LINE_BREAKS: [char; 7] = [
    '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}',
];

/// Panics (a crash for libFuzzer) unless `err` renders as one non-empty
/// line.
pub fn assert_one_sentence(err: &(dyn std::error::Error + 'static)) {
    // What the binary prints: the error and its causes.
    let msg = vmwatch_core::error::chain(err);
    assert!(!msg.trim().is_empty(), "empty error message: {err:?}");
    assert!(
        !msg.contains(LINE_BREAKS),
        "error message spans several lines: {msg:?}"
    );
}
