//! JSON Lines plan record files: any bytes give rows or an error, never a panic.
#![no_main]

use cpis_relay::records_file::{Format, read_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rows) = read_from(data, Format::JsonLines, "fuzz.jsonl") {
        for row in rows {
            assert!(row.line >= 1);
        }
    }
});
