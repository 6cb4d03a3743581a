//! `ferry start --head`, a driver that joins it by address, `ferry status`, `ferry stop`: real
//! processes and TCP on loopback. This test binary is also the job: the node runs its workers
//! from it.

use ferry_testkit::Head;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[ferry::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[ferry::remote]
fn pid() -> u32 {
    std::process::id()
}

fn ferry_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).output().expect("run ferry")
}

#[test]
fn a_driver_joins_a_node_started_by_the_cli_and_the_cli_sees_and_stops_it() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block"]);
    let mut head = Head::start(cmd, T).unwrap();
    let (address, token) = (head.address.clone(), head.token.clone());

    // A wrong token is refused, with the reason.
    let bad = ferry_cmd(&["status", "--address", &address, "--token", "not-the-token"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong or missing cluster token"));

    // This process joins as a driver; tasks run on workers the node starts from this binary.
    ferry::init(ferry::Config::default().address(&address).token(&token)).expect("join the node");
    let refs: Vec<_> = (0..20u64).map(square::remote).collect();
    assert_eq!(ferry::get_all(&refs).unwrap(), (0..20u64).map(|x| x * x).collect::<Vec<_>>());
    let worker = ferry::get_timeout(&pid::remote(), T).unwrap();
    assert_ne!(worker, std::process::id());
    let big = ferry::put(vec![3u8; 4 << 20]).unwrap();
    assert_eq!(ferry::get_bytes(&big).unwrap()[1234], 3);

    // The CLI sees the node, its CPUs and the object.
    let st = ferry_cmd(&["status", "--address", &address, "--token", &token]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}{}", String::from_utf8_lossy(&st.stderr));
    assert!(text.contains("alive") && text.contains("CPU: 2") && text.contains("1 object,"), "{text}");
    drop(big);
    ferry::shutdown();

    // Stop: the node and its workers go.
    let stop = ferry_cmd(&["stop", "--address", &address, "--token", &token]);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(head.wait_exit(T).unwrap(), "the head exits cleanly after ferry stop");
    let end = Instant::now() + T;
    while std::path::Path::new(&format!("/proc/{worker}")).exists() {
        assert!(Instant::now() < end, "worker {worker} outlived its node");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn start_needs_a_role() {
    for args in [&["start"][..], &["start", "--head", "--address", "127.0.0.1:1"][..]] {
        let out = ferry_cmd(args);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("give either --head, or --address"));
    }
}
