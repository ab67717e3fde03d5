#![no_main]

// The verdicts of the real program against the model's (`enforcer_fuzz::packet`). Needs root
// (CAP_BPF, CAP_NET_ADMIN): one datapath is loaded per process, at the first input.
libfuzzer_sys::fuzz_target!(|data: &[u8]| enforcer_fuzz::packet::run(data));
