//! Query templates (`sql::template`): a text learned as a template, and
//! the same text with its literals replaced by pieces of the input, must
//! split and scan to what the template says whenever the template matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::sql::template::check_template;

fuzz_target!(|data: &[u8]| {
    // the text, then the replacements, separated by 0xff bytes
    let mut parts = data.split(|&b| b == 0xff);
    let Some(text) = parts.next() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let replacements: Vec<&[u8]> = parts.collect();
    let _ = check_template(&text, &replacements);
});
