#![no_main]
//! `engine_pair`: see `pipe_rpc_fuzz::checks::engine_pair` for the input and the oracles.

use libfuzzer_sys::fuzz_target;
use pipe_rpc_fuzz::checks;

#[global_allocator]
static ALLOC: checks::Counting = checks::Counting;

fuzz_target!(|data: &[u8]| checks::engine_pair(data));
