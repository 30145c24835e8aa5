//! The SQL scanner every client statement goes through before any parser
//! (`sql::shape`): `scan` and `split_statements` on arbitrary text; and the
//! passes that make normalized text readable (`sql::analysis`: comments and
//! whitespace folded, lists collapsed), which must never panic and change
//! nothing the second time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::sql::analysis::{collapse_lists, fold_space_and_comments};
use pgsift::sql::shape::{scan, split_statements, split_statements_scanning};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // The fast path of split_statements agrees with the full scan.
    let fast = split_statements(&text);
    assert_eq!(
        fast.as_slice(),
        split_statements_scanning(&text).as_slice(),
        "split of {text:?}"
    );
    for stmt in &fast {
        assert!(!stmt.is_empty() && stmt.trim() == *stmt, "{stmt:?}");
        let _ = scan(stmt.as_bytes(), None);
    }

    // Folding the text out changes nothing, and for valid UTF-8 the shape
    // hash is the hash of the folded text (gathered and streaming hashing
    // agree at every length).
    let mut folded = String::new();
    let with_text = scan(data, Some(&mut folded));
    assert_eq!(with_text, scan(data, None));
    if std::str::from_utf8(data).is_ok() {
        assert_eq!(with_text.hash, xxhash_rust::xxh3::xxh3_64(folded.as_bytes()));
    }

    let tidy = fold_space_and_comments(&text);
    assert_eq!(fold_space_and_comments(&tidy), tidy, "fold of {text:?}");
    let collapsed = collapse_lists(tidy);
    assert_eq!(collapse_lists(collapsed.clone()), collapsed, "collapse of {text:?}");
    let folded_collapsed = collapse_lists(folded);
    assert_eq!(collapse_lists(folded_collapsed.clone()), folded_collapsed);
});
