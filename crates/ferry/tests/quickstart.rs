//! The README's quickstart, run as a test so it can never rot.

#[path = "../../../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

#[test]
fn quickstart_runs() {
    ferry_testkit::own_process!();
    quickstart::main().expect("quickstart failed");
}
