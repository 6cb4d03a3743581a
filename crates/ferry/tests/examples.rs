//! The examples, run as tests so they can never rot.

#[path = "../../../examples/parameter_server.rs"]
#[allow(dead_code)]
mod parameter_server;

#[test]
fn parameter_server_converges() {
    ferry_testkit::own_process!();
    parameter_server::main().expect("parameter server example failed");
}
