//! Secret values cannot be printed or serialized: these programs must not compile.
#[test]
fn secret_types_refuse_debug_display_and_serialize() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
