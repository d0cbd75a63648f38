#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kitfleet_fuzz::crds::securitypolicy_validate(data));
