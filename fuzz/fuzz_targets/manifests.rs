#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| enforcer_fuzz::manifests::run(data));
