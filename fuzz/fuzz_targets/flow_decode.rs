#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enforcer_fuzz::flow_decode::run(data));
