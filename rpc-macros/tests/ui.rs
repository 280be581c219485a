//! Compile-fail and compile-pass tests of `#[service]` diagnostics and expansions.
//!
//! The `.stderr` files are pinned to the toolchain in use; refresh them with
//! `TRYBUILD=overwrite cargo test -p rpc-macros --test ui` and read every diff.

#[test]
// trybuild drives cargo and rustc for the host from inside the test; a Windows test
// binary running under wine cannot. The macro runs on the host either way, so the
// native run covers every diagnostic.
#[cfg_attr(windows, ignore = "trybuild needs the host's cargo; diagnostics are covered by the native run")]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
