#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kitfleet_fuzz::netlink::netlink_reply(data));
