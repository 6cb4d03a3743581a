//! Several hosts as network namespaces on this machine (`ferry-testkit`): a head node on one,
//! `ferry status` and `ferry stop` from another, a job joining by address from a third, and
//! the root namespace unable to reach any of them. Everything is torn down at the end.

use ferry_testkit::{netns_exists, Hosts};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[ferry::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// With `FERRY_TEST_JOIN_ADDRESS` set this test binary is a job that joins that node, sums
/// squares on it, prints the sum and exits (entered before `main`, like worker mode).
#[used]
#[link_section = ".init_array"]
static JOIN: extern "C" fn() = join_entry;

extern "C" fn join_entry() {
    let Ok(address) = std::env::var("FERRY_TEST_JOIN_ADDRESS") else { return };
    if std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    let r = (|| -> ferry::Result<u64> {
        ferry::init(ferry::Config::default().address(&address))?;
        let refs: Vec<_> = (0..20u64).map(square::remote).collect();
        Ok(ferry::get_all(&refs)?.into_iter().sum())
    })();
    match r {
        Ok(sum) => println!("sum={sum}"),
        Err(e) => println!("error={e}"),
    }
    ferry::shutdown();
    std::process::exit(0);
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(c: &mut Child, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + T;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < end, "{what} did not exit within {T:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_head_on_one_host_serves_tools_and_a_job_on_others() {
    let hosts = Hosts::new(3).expect("network namespaces (needs root and `ip`)");
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let mut head = Killed(
        hosts
            .command(0, ferry)
            .args(["start", "--head", "--host", hosts.addr(0), "--port", "0", "--num-cpus", "2", "--block"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
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
    assert!(address.starts_with(hosts.addr(0)), "{address}");

    // Another host sees it over the network.
    let st = hosts.command(1, ferry).args(["status", "--address", &address, "--token", &token]).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success() && text.contains("alive"), "{text}{}", String::from_utf8_lossy(&st.stderr));

    // The root namespace has no route to the hosts: they are isolated.
    let sock: std::net::SocketAddr = address.parse().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)).is_err());

    // A job on a third host joins by address (token from the environment) and runs tasks on
    // the head's workers.
    let mut job = Killed(
        hosts
            .command(2, std::env::current_exe().unwrap())
            .env("FERRY_TEST_JOIN_ADDRESS", &address)
            .env("FERRY_TOKEN", &token)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(wait_exit(&mut job.0, "the job").success());
    let mut printed = String::new();
    job.0.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(printed.contains("sum=2470"), "{printed}");

    let stop = hosts.command(1, ferry).args(["stop", "--address", &address, "--token", &token]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(wait_exit(&mut head.0, "the head").success());

    let names: Vec<String> = (0..hosts.len()).map(|i| hosts.name(i).to_string()).collect();
    drop(hosts);
    for n in names {
        assert!(!netns_exists(&n), "namespace {n} left behind");
    }
}
