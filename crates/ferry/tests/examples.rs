//! The examples, run as tests so they can never rot.

#[path = "../../../examples/parameter_server.rs"]
#[allow(dead_code)]
mod parameter_server;

#[path = "../../../examples/streaming.rs"]
#[allow(dead_code)]
mod streaming;

#[path = "../../../examples/cancellation.rs"]
#[allow(dead_code)]
mod cancellation;

#[test]
fn parameter_server_converges() {
    ferry_testkit::own_process!();
    parameter_server::main().expect("parameter server example failed");
}

#[test]
fn cancellation_takes_the_first_answer_and_cancels_the_rest() {
    ferry_testkit::own_process!();
    cancellation::main().expect("cancellation example failed");
}

#[test]
fn streaming_processes_each_chunk_as_it_arrives() {
    ferry_testkit::own_process!();
    streaming::main().expect("streaming example failed");
}
