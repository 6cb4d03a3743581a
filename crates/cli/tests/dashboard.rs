//! The head's dashboard and metrics, tested as people and tools use them: a head started by
//! the CLI runs a real job (this test binary), then
//! - a real browser (headless Chromium) opens each page with the login URL the head printed,
//!   and the test asserts what the pages show (the node count, a task's name and state, a
//!   failed task's error, the job's progress and log) and keeps a screenshot of each page
//!   (in `target/tmp/dashboard/`);
//! - a real Prometheus server scrapes `/metrics` with the access token and answers queries
//!   for the job's tasks, their latency histograms and the node;
//! - without the token, nothing but the login page is served.

use ferry::prelude::*;
use ferry_testkit::Head;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

#[ferry::remote]
fn double(x: u64) -> u64 {
    2 * x
}

#[ferry::remote]
fn broken() -> u64 {
    println!("about to break");
    panic!("broken on purpose")
}

/// This binary as a job (`--ferry-test-job`, run by the head with `FERRY_ADDRESS`).
#[used]
#[link_section = ".init_array"]
static JOB: extern "C" fn() = job_entry;

#[ferry::actor]
struct Keeper;

#[ferry::actor]
impl Keeper {
    fn new() -> Self {
        Keeper
    }
    fn ping(&self) -> u32 {
        1
    }
}

extern "C" fn job_entry() {
    if std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("--ferry-test-hold") {
        // Holds an actor and a 4 MiB object until stopped.
        ferry::init(ferry::Config::default()).unwrap();
        let keeper = Keeper::options().name("keeper").remote().unwrap();
        ferry::get(&keeper.ping()).unwrap();
        let big = ferry::put(vec![7u8; 4 << 20]).unwrap();
        ferry::wait(std::slice::from_ref(&big), 1, None).unwrap();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let _ = (&keeper, &big);
        }
    }
    if std::env::args().nth(1).as_deref() != Some("--ferry-test-job") {
        return;
    }
    ferry::init(ferry::Config::default()).unwrap();
    println!("the job says hello");
    let refs: Vec<_> = (0..5).map(double::remote).collect();
    assert_eq!(ferry::get_all(&refs).unwrap(), vec![0, 2, 4, 6, 8]);
    assert!(ferry::get(&broken::remote()).is_err());
    ferry::shutdown();
    std::process::exit(0);
}

fn start_head() -> Head {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block", "--dashboard-port", "0"]);
    let head = Head::start(cmd, T).unwrap();
    assert!(head.dashboard.is_some(), "the head printed no dashboard URL");
    head
}

/// Runs `cmd`, killed (and the test failed) after `within`.
fn run(mut cmd: Command, within: Duration) -> std::process::Output {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let e = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let end = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{cmd:?} took more than {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output { status, stdout: o.join().unwrap(), stderr: e.join().unwrap() }
}

/// Submits this binary as a job and waits for it to end.
fn run_job(head: &Head) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address);
    c.args(["job", "submit", "--"]).arg(std::env::current_exe().unwrap()).arg("--ferry-test-job");
    let out = run(c, T);
    assert!(
        out.status.success(),
        "the job failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dashboard's address and access token, from the URL the head printed.
fn dashboard(head: &Head) -> (String, String) {
    let url = head.dashboard.clone().unwrap();
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, query) = rest.split_once("/?token=").unwrap();
    (addr.to_string(), query.to_string())
}

/// One HTTP/1.1 request; returns the status, the headers and the body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn api(addr: &str, token: &str, path: &str) -> serde_json::Value {
    let (status, _, body) = http(addr, "GET", path, &[("Authorization", &format!("Bearer {token}"))], "");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `f` until it gives a value, for at most `T`.
fn until<V>(what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let end = Instant::now() + T;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "never saw {what} within {T:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A program on the PATH that the test needs (`.ci/run` installs it).
fn program(names: &[&str], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("this test needs {names:?}: install it (`apt-get install {package}`; `.ci/run` does)");
}

/// Headless Chromium on `url`: the page's DOM once its scripts ran, and a screenshot.
struct Browser {
    exe: PathBuf,
    profile: PathBuf,
    shots: PathBuf,
}

impl Browser {
    fn new(tmp: &Path) -> Browser {
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&shots).unwrap();
        let profile = tmp.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        Browser { exe: program(&["chromium", "chromium-browser", "google-chrome"], "chromium"), profile, shots }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .args(["--virtual-time-budget=5000", "--window-size=1280,900"]);
        c.env_remove("DBUS_SESSION_BUS_ADDRESS");
        c
    }

    /// Opens `url` and returns the page as it shows it; saves a screenshot as `name`.png.
    fn open(&self, url: &str, name: &str) -> String {
        let mut c = self.cmd();
        c.arg("--dump-dom").arg(url);
        let out = run(c, T);
        let dom = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(dom.contains("<html"), "Chromium showed no page for {name}: {}", String::from_utf8_lossy(&out.stderr));
        let shot = self.shots.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&shot);
        let mut c = self.cmd();
        c.arg(format!("--screenshot={}", shot.display())).arg(url);
        run(c, T);
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 5_000, "no screenshot of {name} ({size} bytes at {})", shot.display());
        dom
    }
}

/// The text of the element with `id` in `dom` (the first text after its opening tag).
fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page: {dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    &rest[start..end]
}

#[test]
fn the_dashboard_shows_a_real_job_in_a_real_browser() {
    let tmp = tempdir("browser");
    let head = start_head();
    let (addr, token) = dashboard(&head);

    // Without the token: nothing but the login page.
    let (status, _, _) = http(&addr, "GET", "/api/cluster", &[], "");
    assert_eq!(status, 401);
    let (status, _, _) = http(&addr, "GET", "/metrics", &[("Authorization", "Bearer 00")], "");
    assert_eq!(status, 401);
    let (status, headers, _) = http(&addr, "GET", "/", &[], "");
    assert_eq!((status, headers.to_lowercase().contains("location: /login")), (303, true), "{headers}");
    let (status, _, body) = http(&addr, "GET", "/?token=not-the-token", &[], "");
    assert_eq!(status, 401, "{body}");
    // The login form takes the cluster token, and keeps the derived one in the cookie.
    let form = format!("token={}", head.token);
    let (status, headers, _) =
        http(&addr, "POST", "/login", &[("Content-Type", "application/x-www-form-urlencoded")], &form);
    assert_eq!(status, 303, "{headers}");
    assert!(headers.contains(&format!("ferry_dashboard={token}; HttpOnly; SameSite=Strict")), "{headers}");
    assert!(!headers.contains(&head.token), "the cookie holds the cluster token: {headers}");
    let (_, headers, _) = http(&addr, "GET", "/api/cluster", &[("Cookie", &format!("ferry_dashboard={token}"))], "");
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    assert!(headers.contains("frame-ancestors 'none'"), "{headers}");

    run_job(&head);
    // The job's events reach the head's history as its driver shuts down.
    let failed = until("the failed task in the history", || {
        let t = api(&addr, &token, "/api/tasks?state=failed");
        t["tasks"].as_array().and_then(|a| a.first()).map(|t| t["task"].as_str().unwrap().to_string())
    });

    let browser = Browser::new(&tmp);
    let url = |page: &str| format!("http://{addr}/?token={token}#/{page}");
    let dom = browser.open(&url("cluster"), "cluster");
    assert_eq!(by_id(&dom, "node-count"), "1", "the cluster page's node count");
    assert!(dom.contains("(head)"), "the head's row is not marked");

    let dom = browser.open(&url("jobs"), "jobs");
    assert!(dom.contains("class=\"job-status\">succeeded<"), "the job is not shown as succeeded: {dom}");
    assert!(dom.contains("class=\"progress\">6 / 6<"), "the job's progress is not its 6 tasks: {dom}");

    let dom = browser.open(&url("tasks"), "tasks");
    assert!(dom.contains("class=\"task-name\">double<"), "no task named double: {dom}");
    assert!(dom.contains("class=\"task-state\">finished<"), "no finished task: {dom}");
    assert!(dom.contains("class=\"task-state\">failed<"), "no failed task: {dom}");
    assert_eq!(by_id(&dom, "matched"), "6");

    let dom = browser.open(&url(&format!("task/{failed}")), "task");
    assert_eq!(by_id(&dom, "task-state"), "failed");
    assert!(dom.contains("broken on purpose"), "the failed task's error is not shown: {dom}");
    assert!(by_id(&dom, "task-log").contains("about to break"), "the failed task's output is not shown: {dom}");

    let dom = browser.open(&url("tasks?state=failed"), "tasks-failed");
    assert_eq!(by_id(&dom, "matched"), "1", "the state filter");

    let dom = browser.open(&url("logs/1"), "logs");
    assert!(by_id(&dom, "log").contains("the job says hello"), "the job's log: {dom}");

    // A job that holds an actor and an object, for the actors and objects pages.
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address);
    c.args(["job", "submit", "--no-wait", "--"]).arg(std::env::current_exe().unwrap()).arg("--ferry-test-hold");
    assert!(run(c, T).status.success());
    until("the held actor and object", || {
        let a = api(&addr, &token, "/api/actors");
        let m = api(&addr, &token, "/api/memory");
        let alive = a["actors"].as_array()?.iter().any(|a| a["state"] == "alive" && a["name"] == "keeper");
        let big =
            m["objects"].as_array()?.iter().any(|o| o["size"].as_u64() >= Some(4 << 20) && o["location"] == "in store");
        (alive && big).then_some(())
    });
    let dom = browser.open(&url("actors"), "actors");
    assert!(dom.contains("class=\"actor-state\">alive<"), "no live actor on the actors page: {dom}");
    assert!(dom.contains("Keeper"), "the actor's class is not shown: {dom}");
    assert_eq!(by_id(&dom, "actors-alive"), "1", "{dom}");
    let dom = browser.open(&url("actors?state=dead"), "actors-dead");
    assert_eq!(by_id(&dom, "actors-matched"), "0", "the state filter on actors: {dom}");
    assert!(!dom.contains("Keeper"), "a live actor listed as dead: {dom}");
    let dom = browser.open(&url("objects"), "objects");
    assert!(dom.contains("class=\"object-size\">4.0 MiB<"), "the 4 MiB object is not shown: {dom}");
    assert!(dom.contains("local ref"), "why the object is alive is not shown: {dom}");
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("FERRY_TOKEN", &head.token).env("FERRY_ADDRESS", &head.address).args(["job", "stop", "2"]);
    assert!(run(c, T).status.success());
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_real_prometheus_scrapes_the_heads_metrics() {
    let prometheus = program(&["prometheus"], "prometheus");
    let tmp = tempdir("prometheus");
    let head = start_head();
    let (addr, token) = dashboard(&head);
    run_job(&head);
    until("the job's tasks in the history", || {
        let t = api(&addr, &token, "/api/tasks?state=finished");
        (t["matched"].as_u64() == Some(5)).then_some(())
    });

    // The access token in a private file, as Prometheus reads a bearer token.
    let token_file = tmp.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let config = tmp.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ferry\n    \
             authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: \
             ['{addr}']\n",
            token_file.display()
        ),
    )
    .unwrap();
    let web = free_port();
    let mut server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tmp.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let web = format!("127.0.0.1:{web}");
    let query = |q: &str| -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let (status, _, body) = http_retry(&web, &path)?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        if status != 200 {
            return None;
        }
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        until("Prometheus scraping the dashboard", || (query("up{job=\"ferry\"}") == Some(1.0)).then_some(()));
        until("the node up", || (query("sum(ferry_node_up)") == Some(1.0)).then_some(()));
        until("5 finished double tasks", || {
            (query("sum(ferry_tasks{state=\"finished\",function=~\".*double\"})") == Some(5.0)).then_some(())
        });
        until("1 failed broken task", || {
            (query("sum(ferry_tasks{state=\"failed\",function=~\".*broken\"})") == Some(1.0)).then_some(())
        });
        until("the run-time histogram of double", || {
            (query("sum(ferry_task_run_seconds_count{function=~\".*double\"})") == Some(5.0)).then_some(())
        });
        until("the resources", || {
            (query("sum(ferry_resources_capacity{resource=\"CPU\"})") == Some(2.0)).then_some(())
        });
        until("the store capacity", || query("sum(ferry_object_store_capacity_bytes)").filter(|v| *v > 0.0));
    }));
    let targets = http_retry(&web, "/api/v1/targets").map(|r| r.2).unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();
    if let Err(e) = seen {
        let log = std::fs::read_to_string(tmp.join("prometheus.log")).unwrap_or_default();
        panic!("{:?}\nPrometheus' targets: {targets}\nits log: {log}", e.downcast_ref::<String>());
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A request that may find nothing listening yet.
fn http_retry(addr: &str, path: &str) -> Option<(u16, String, String)> {
    TcpStream::connect(addr).ok()?;
    Some(http(addr, "GET", path, &[], ""))
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-dash-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_slowloris_flood_from_one_address_neither_exhausts_the_dashboard_nor_shuts_out_others() {
    use std::net::{SocketAddr, TcpStream};
    let head = start_head();
    let (addr, token) = dashboard(&head);
    let target: SocketAddr = addr.parse().unwrap();
    // 200 connections from 127.0.0.1 that never send a request.
    let flood: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(target).ok()).collect();
    assert!(flood.len() >= 100, "could not open the flood's connections");
    std::thread::sleep(Duration::from_millis(500));
    // All but the 16 a source may hold were closed at once by the dashboard.
    let closed = |conns: &[TcpStream]| conns.iter().filter(|c| is_closed(c)).count();
    let held = flood.len() - closed(&flood);
    assert!(held <= 16, "{held} connections of one address held open (at most 16)");
    // Meanwhile another address is served at once.
    let t = Instant::now();
    let mut s = connect_from_another_address(target);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/cluster HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "another address was not served during the flood: {raw}");
    assert!(t.elapsed() < Duration::from_secs(3), "another address waited {:?}", t.elapsed());
    // The held ones are closed once their headers are overdue (10 s).
    let end = Instant::now() + Duration::from_secs(20);
    while closed(&flood) < flood.len() {
        assert!(Instant::now() < end, "idle connections were never closed");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the other side closed `c` (a read ends or fails, rather than waiting).
fn is_closed(c: &std::net::TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut b = [0u8; 1];
    match (&*c).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// A connection to `target` from 127.0.0.2 (another source address on loopback).
fn connect_from_another_address(target: std::net::SocketAddr) -> TcpStream {
    // std cannot bind before connecting; a TCP socket made with libc can.
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor made here, handed to `TcpStream` once connected.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        local.sin_family = libc::AF_INET as u16;
        local.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 2]);
        assert_eq!(
            libc::bind(
                fd,
                &local as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0
        );
        let std::net::SocketAddr::V4(t) = target else { panic!("IPv4 only") };
        let mut remote: libc::sockaddr_in = std::mem::zeroed();
        remote.sin_family = libc::AF_INET as u16;
        remote.sin_port = t.port().to_be();
        remote.sin_addr.s_addr = u32::from_ne_bytes(t.ip().octets());
        assert_eq!(
            libc::connect(
                fd,
                &remote as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0
        );
        TcpStream::from_raw_fd(fd)
    }
}
