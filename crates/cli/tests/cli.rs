//! `ferry start --head`, a driver that joins it by address, `ferry status`, `ferry stop`: real
//! processes and TCP on loopback. This test binary is also the job: the node runs its workers
//! from it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
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

/// The head node, killed if the test fails before `ferry stop`.
struct Head(Child);

impl Drop for Head {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ferry_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).output().expect("run ferry")
}

#[test]
fn a_driver_joins_a_node_started_by_the_cli_and_the_cli_sees_and_stops_it() {
    let mut head = Head(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the head"),
    );
    // Its first lines say where it listens and with what token.
    let out = head.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut address, mut token) = (String::new(), String::new());
    while address.is_empty() || token.is_empty() {
        let line = rx.recv_timeout(T).expect("the head prints its address and token");
        if let Some(a) = line.strip_prefix("address: ") {
            address = a.to_string();
        }
        if let Some(t) = line.strip_prefix("token: ") {
            token = t.to_string();
        }
    }

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
    assert!(text.contains("alive") && text.contains("CPU: 2") && text.contains("1 objects"), "{text}");
    drop(big);
    ferry::shutdown();

    // Stop: the node and its workers go.
    let stop = ferry_cmd(&["stop", "--address", &address, "--token", &token]);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    let end = Instant::now() + T;
    loop {
        if let Some(status) = head.0.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(Instant::now() < end, "the head did not exit after ferry stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = Instant::now() + T;
    while std::path::Path::new(&format!("/proc/{worker}")).exists() {
        assert!(Instant::now() < end, "worker {worker} outlived its node");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn start_without_head_is_refused_clearly() {
    let out = ferry_cmd(&["start", "--address", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only `ferry start --head`"));
}
