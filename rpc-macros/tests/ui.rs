//! Compile-fail and compile-pass tests of `#[service]` diagnostics and expansions.
//!
//! The `.stderr` files are pinned to the toolchain in use; refresh them with
//! `TRYBUILD=overwrite cargo test -p rpc-macros --test ui` and read every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
