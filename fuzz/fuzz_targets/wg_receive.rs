#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kitfleet_fuzz::dataplane::wg_receive(data));
