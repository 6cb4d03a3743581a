//! The macros refuse what they cannot run and say why, at compile time: compile-fail cases
//! checked against the compiler's messages (trybuild). An argument of the wrong type is named
//! in the error; a borrowed argument, a generic function, an actor without `new`, an async
//! actor with `&mut self` methods, an unknown option, `num_returns` on a value that is not a
//! tuple of that many, `#[ferry::method]` outside an actor, and splitting a value that is not
//! a vector each get a message that says what to do instead.

#[test]
fn the_macros_refuse_what_they_cannot_run_and_say_why() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
