#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("/tmp/uiscratch/fail/*.rs");
    t.pass("/tmp/uiscratch/pass/*.rs");
}
