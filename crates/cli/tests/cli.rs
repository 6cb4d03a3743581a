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

ferry_testkit::job!("FERRY_TEST_CLI_JOB", short_job);

/// A short job: joins the node at `address`, runs tasks, exits.
fn short_job(address: &str) {
    ferry::init(ferry::Config::default().address(address)).expect("join the node");
    let refs: Vec<_> = (0..20u64).map(square::remote).collect();
    assert_eq!(ferry::get_all(&refs).unwrap().len(), 20);
    std::process::exit(0);
}

/// The socket files of a node's session directory: one per process of it that listens.
fn sockets(session: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(session)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("p-") && n.ends_with(".sock"))
        .collect()
}

/// The finding: five clean driver runs left eight stale `p-*.sock` files in a node's session
/// directory (311 after twenty minutes). Now a process's socket goes with it: drivers remove
/// their own, and the node removes those of processes it saw go (killed workers included).
#[test]
fn driver_runs_and_killed_workers_leave_no_socket_files() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block"]);
    let head = Head::start(cmd, T).unwrap();
    let runtime = ferry_os::runtime_dir().unwrap();
    let prefix = format!("s-{}-", head.child.id());
    let session = std::fs::read_dir(&runtime)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .expect("the node's session directory");
    for i in 0..5 {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("FERRY_TEST_CLI_JOB", &head.address)
            .env("FERRY_TOKEN", &head.token)
            .output()
            .unwrap();
        assert!(out.status.success(), "run {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Kill a worker (not the control store, the head's other child).
    let is_control = |p: &u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--control-store"))
    };
    let workers: Vec<u32> =
        ferry_testkit::children_of(head.child.id()).into_iter().filter(|p| !is_control(p)).collect();
    assert!(!workers.is_empty());
    ferry_testkit::signal(workers[0], 9);
    let live_workers = || {
        let out = ferry_cmd(&["status", "--address", &head.address, "--token", &head.token]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("workers:"))
            .and_then(|w| w.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    let end = Instant::now() + T;
    loop {
        let (socks, live) = (sockets(&session), live_workers());
        if socks.len() == live && !ferry_testkit::children_of(head.child.id()).contains(&workers[0]) {
            break;
        }
        assert!(Instant::now() < end, "{} socket files for {live} workers: {socks:?}", socks.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

ferry_testkit::job!("FERRY_TEST_CLI_NOWHERE", nowhere_job);

/// A job whose `init` must fail: prints the error.
fn nowhere_job(address: &str) {
    // SAFETY: before main, one thread.
    unsafe { std::env::set_var("FERRY_ADDRESS", address) };
    match ferry::init(ferry::Config::default()) {
        Ok(()) => println!("joined?"),
        Err(e) => println!("error: {e}"),
    }
    std::process::exit(0);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The findings of a new user: a job pointed at an address where nothing listens was told
/// about a missing token file, and `FERRY_ADDRESS` without a port looked for
/// `/tmp/ferry-cluster-0.token`. Both now say what is wrong and what to do; so does the CLI.
#[test]
fn a_wrong_address_is_told_for_what_it_is() {
    // A port some other test's killed node held may still have that node's socket link, and
    // then the answer is rightly "your node there is not running any more": take another.
    let closed = (0..100)
        .map(|_| ferry_testkit::ClosedPort::new())
        .find(|c| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], c.port));
            ferry_os::local::local_socket_links(addr).unwrap().iter().all(|l| l.symlink_metadata().is_err())
        })
        .expect("a closed port without a dead node's socket link");
    let port = closed.port;
    let run = |address: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("FERRY_TEST_CLI_NOWHERE", address)
            .env_remove("FERRY_TOKEN")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let nothing = run(&format!("127.0.0.1:{port}"));
    assert!(
        nothing.contains(&format!("nothing is listening at 127.0.0.1:{port}"))
            && nothing.contains("ferry start --head"),
        "{nothing}"
    );
    assert!(!nothing.contains("token"), "{nothing}");
    let no_port = run("127.0.0.1");
    assert!(no_port.contains("use HOST:PORT"), "{no_port}");
    for address in [format!("127.0.0.1:{port}"), "127.0.0.1".to_string()] {
        let out = ferry_cmd(&["status", "--address", &address]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && (said.contains("nothing is listening") || said.contains("HOST:PORT")),
            "{said}"
        );
        assert!(!said.contains("token"), "{said}");
    }
}

/// `ferry status` counts nodes without the control store, says "1 node", and lists jobs by
/// the program's name.
#[test]
fn status_counts_nodes_and_names_jobs() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "1", "--block"]);
    let head = Head::start(cmd, T).unwrap();
    let submit = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env("FERRY_TOKEN", &head.token)
        .args(["submit", "--address", &head.address, "--", "/bin/echo", "hello"])
        .output()
        .unwrap();
    assert!(submit.status.success(), "{}", String::from_utf8_lossy(&submit.stderr));
    let end = Instant::now() + T;
    let text = loop {
        let st = ferry_cmd(&["status", "--address", &head.address, "--token", &head.token]);
        let text = String::from_utf8_lossy(&st.stdout).to_string();
        if text.contains("cluster: ") || Instant::now() > end {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("cluster: 1 node, 1 alive") && text.contains("control store at "), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("  node ")).count(), 1, "{text}");
    assert!(text.contains("job 1 echo hello (pid"), "{text}");
    drop(head);
}

/// Every option of every subcommand says what it is for in `--help`.
#[test]
fn every_option_of_every_subcommand_is_documented() {
    let subs: [&[&str]; 10] = [
        &["start"],
        &["submit"],
        &["status"],
        &["stop"],
        &["job"],
        &["job", "submit"],
        &["job", "list"],
        &["job", "status"],
        &["job", "logs"],
        &["job", "stop"],
    ];
    for sub in subs {
        let out = ferry_cmd(&[sub, &["--help"]].concat());
        let sub = sub.join(" ");
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{help}");
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if !(t.starts_with("--") || t.starts_with("-h")) || !l.starts_with(' ') {
                continue;
            }
            // `--name <NAME>  what it is` on one line, or the description on the next.
            let same_line = t.split("  ").filter(|p| !p.trim().is_empty()).count() >= 2;
            let next = lines.get(i + 1).map(|n| n.trim_start()).unwrap_or("");
            let next_line = !next.is_empty() && !next.starts_with('-') && lines[i + 1].starts_with("          ");
            assert!(same_line || next_line, "ferry {sub}: option without help: {l:?}\n{help}");
        }
    }
}

/// A node of this user that died leaves its link: a command or job then says the node is not
/// running, and sends nothing to whatever took the port since (another user, say).
#[test]
fn a_dead_nodes_port_is_not_trusted_with_this_users_connections() {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", &port.to_string(), "--num-cpus", "1", "--block"]);
    let mut head = Head::start(cmd, T).unwrap();
    ferry_testkit::signal(head.child.id(), 9);
    let _ = head.wait_exit(T);
    // Someone else takes the port and waits for what comes.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    squatter.set_nonblocking(true).unwrap();
    let address = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env("FERRY_TOKEN", &head.token)
        .args(["status", "--address", &address])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("is not running any more"), "{said}");
    let job = Command::new(std::env::current_exe().unwrap())
        .env("FERRY_TEST_CLI_NOWHERE", &address)
        .env("FERRY_TOKEN", &head.token)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&job.stdout).contains("is not running any more"));
    assert!(squatter.accept().is_err(), "a connection reached the port's new owner");
    // What the killed head left (a head stopped with `ferry stop` removes it itself).
    let runtime = ferry_os::runtime_dir().unwrap();
    let _ = std::fs::remove_dir_all(runtime.join(format!("head-{port}")));
    for f in [format!("node-127.0.0.1:{port}.sock"), format!("node-[::1]:{port}.sock"), format!("cluster-{port}.token")]
    {
        let _ = std::fs::remove_file(runtime.join(f));
    }
}

/// `ferry status --watch` shows the status again every interval until stopped, and ends
/// with an error once the node is gone.
#[test]
fn status_watch_repeats_until_the_node_is_gone() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "1", "--block"]);
    let head = Head::start(cmd, T).unwrap();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env("FERRY_TOKEN", &head.token)
        .args(["status", "--address", &head.address, "--watch", "--interval-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Three snapshots, each under its time line.
    let mut snapshots = 0;
    let end = Instant::now() + T;
    while snapshots < 3 {
        let left = end.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("ferry status --watch printed three snapshots in time");
        if line.starts_with("every ") {
            snapshots += 1;
        } else {
            assert!(line.is_empty() || line.starts_with(' ') || line.contains(':'), "{line}");
        }
    }
    // The node goes: the watch ends, with an error.
    drop(head);
    let end = Instant::now() + T;
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "ferry status --watch outlived its node");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
}
