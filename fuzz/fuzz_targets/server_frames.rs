#![no_main]
//! `server_frames`: see `pipe_rpc_fuzz::checks::server_frames` for the input and the oracles.

use libfuzzer_sys::fuzz_target;
use pipe_rpc_fuzz::checks;

#[global_allocator]
static ALLOC: checks::Counting = checks::Counting;

fuzz_target!(|data: &[u8]| checks::server_frames(data));
