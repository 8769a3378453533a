#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| golem_fuzz::module(data));
