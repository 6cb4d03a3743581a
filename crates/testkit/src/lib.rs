//! Hosts for multi-host tests, made of Linux network namespaces on this machine: each host
//! is a namespace with its own address on a private bridge (veth pairs), so processes in it
//! reach the others only through the network, as on separate machines. The filesystem is
//! still shared.
//!
//! [`Hosts::new`] builds them (root needed) and `Drop` removes every namespace, link and bridge
//! it made, also when the test panics. Names carry this process's pid, so hosts left by a
//! killed test run are recognised and removed by the next one.
//!
//! [`own_process!`] runs a test in a process of its own under `cargo test` as under nextest
//! (see [`alone`]).

pub mod alone;

use std::process::{Command, Output};

/// Namespace names start with this, then `<pid>-<n>-<host>`.
const PREFIX: &str = "ferryns-";

/// A set of network-namespace hosts on one bridge.
#[derive(Debug)]
pub struct Hosts {
    tag: String,
    bridge: String,
    names: Vec<String>,
    addrs: Vec<String>,
}

fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Removes namespaces and bridges left by test processes that no longer exist.
fn cleanup_stale() {
    let Ok(out) = ip(&["netns", "list"]) else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next() else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
            let parts: Vec<&str> = rest.split('-').collect();
            if parts.len() >= 2 {
                let _ = ip(&["link", "del", &bridge_name(parts[0], parts[1])]);
            }
        }
    }
}

fn bridge_name(pid: &str, n: &str) -> String {
    // Interface names are at most 15 bytes.
    format!("fb{}", &format!("{pid}{n}")[..format!("{pid}{n}").len().min(13)])
}

impl Hosts {
    /// Makes `n` hosts (at most 200), with addresses `10.<a>.<b>.<1..=n>/24` on a bridge of
    /// their own.
    pub fn new(n: usize) -> Result<Hosts, String> {
        assert!((1..=200).contains(&n));
        cleanup_stale();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{pid}-{k}");
        let bridge = bridge_name(&pid.to_string(), &k.to_string());
        // A /24 of 10.0.0.0/8 that depends on the pid, so concurrent test processes differ.
        let (a, b) = (1 + (pid / 251) % 250, (pid % 251) as u8 ^ (k as u8).wrapping_mul(37));
        let mut hosts = Hosts { tag, bridge: bridge.clone(), names: Vec::new(), addrs: Vec::new() };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let name = format!("{PREFIX}{}-{i}", hosts.tag);
            ip(&["netns", "add", &name])?;
            hosts.names.push(name.clone());
            let outer = format!("fv{pid}x{k}x{i}");
            let inner = format!("fp{pid}x{k}x{i}");
            let (outer, inner) = (outer[..outer.len().min(15)].to_string(), inner[..inner.len().min(15)].to_string());
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &name])?;
            ip(&["link", "set", &outer, "master", &bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            let addr = format!("10.{a}.{b}.{}", i + 1);
            ip(&["-n", &name, "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
            ip(&["-n", &name, "link", "set", &inner, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            hosts.addrs.push(addr);
        }
        Ok(hosts)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> &str {
        &self.addrs[i]
    }

    /// Host `i`'s namespace name.
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// A command that runs `program` on host `i`.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(program);
        c
    }
}

impl Hosts {
    /// Removes the hosts now and checks that no namespace of theirs is left.
    pub fn tear_down(self) -> Result<(), String> {
        let names = self.names.clone();
        drop(self);
        match names.iter().find(|n| netns_exists(n)) {
            Some(n) => Err(format!("namespace {n} left behind")),
            None => Ok(()),
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            // Deleting a namespace deletes the veth end in it, and so its pair.
            let _ = ip(&["netns", "del", n]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Whether a namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    ip(&["netns", "list"])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split_whitespace().next() == Some(name)))
        .unwrap_or(false)
}

/// A `ferry start --head --block` process, with the address and token it printed; killed on
/// drop if still running.
#[derive(Debug)]
pub struct Head {
    pub child: std::process::Child,
    pub address: String,
    pub token: String,
    /// The URL that logs a browser in to its dashboard, if it serves one.
    pub dashboard: Option<String>,
    /// The token file it wrote (removed on drop: a killed head cannot).
    token_file: Option<std::path::PathBuf>,
}

impl Head {
    /// Spawns `cmd` (a `ferry start --head ... --block`) and reads its address and token.
    pub fn start(mut cmd: Command, within: std::time::Duration) -> Result<Head, String> {
        use std::io::BufRead;
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().map_err(|e| format!("start the head: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut head = Head { child, address: String::new(), token: String::new(), dashboard: None, token_file: None };
        let end = std::time::Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| format!("the head printed no address and token within {within:?}"))?;
            if let Some(a) = line.strip_prefix("address: ") {
                head.address = a.to_string();
            }
            if let Some(t) = line.strip_prefix("token: ") {
                head.token = t.to_string();
            }
            if let Some(f) = line.strip_prefix("the token is in ").and_then(|r| r.split(" (").next()) {
                head.token_file = Some(f.into());
            }
            if let Some(u) = line.strip_prefix("dashboard: ").and_then(|r| r.split(' ').next()) {
                head.dashboard = Some(u.to_string());
            }
            // Everything it prints about itself comes before this.
            if line == "ready" {
                break;
            }
        }
        if head.address.is_empty() || head.token.is_empty() || head.token_file.is_none() {
            return Err("the head was ready without printing its address, token and token file".into());
        }
        Ok(head)
    }

    /// Waits (at most `within`) for the head to exit, and returns whether it exited cleanly.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Result<bool, String> {
        wait_exit(&mut self.child, within)
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(f) = &self.token_file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Waits (at most `within`) for `child` to exit; whether it exited cleanly.
pub fn wait_exit(child: &mut std::process::Child, within: std::time::Duration) -> Result<bool, String> {
    let end = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(s.success());
        }
        if std::time::Instant::now() >= end {
            return Err(format!("process {} did not exit within {within:?}", child.id()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A cluster of `ferry` nodes on namespace hosts: the head on host 0, a member on each other
/// host. Killed on drop (each node with its workers).
#[derive(Debug)]
pub struct Cluster {
    pub head: Head,
    pub members: Vec<Head>,
}

impl Cluster {
    /// Starts `ferry` (the CLI at `ferry`) on every host, host `i` with `args[i]` added
    /// (`--num-cpus`, `--resources`, ...), heartbeats every 100 ms, and waits until the head
    /// sees every node alive.
    pub fn start(
        hosts: &Hosts,
        ferry: &str,
        args: &[Vec<String>],
        within: std::time::Duration,
    ) -> Result<Cluster, String> {
        Self::start_with(hosts, ferry, args, &[], within)
    }

    /// [`Cluster::start`] with extra environment for the head (`FERRY_NODE_TIMEOUT_MS`, ...).
    pub fn start_with(
        hosts: &Hosts,
        ferry: &str,
        args: &[Vec<String>],
        head_env: &[(&str, &str)],
        within: std::time::Duration,
    ) -> Result<Cluster, String> {
        let end = std::time::Instant::now() + within;
        let mut cmd = hosts.command(0, ferry);
        cmd.envs(head_env.iter().copied());
        cmd.args(["start", "--head", "--host", hosts.addr(0), "--port", "0", "--block"]);
        cmd.args(args.first().cloned().unwrap_or_default());
        let head = Head::start(cmd, within)?;
        let mut members = Vec::new();
        for i in 1..hosts.len() {
            let mut cmd = hosts.command(i, ferry);
            cmd.env("FERRY_HEARTBEAT_MS", "100");
            cmd.env("FERRY_TOKEN", &head.token);
            cmd.args(["start", "--address", &head.address, "--host", hosts.addr(i)]);
            cmd.args(["--port", "0", "--block"]);
            cmd.args(args.get(i).cloned().unwrap_or_default());
            members.push(Head::start(cmd, within)?);
        }
        let cluster = Cluster { head, members };
        let want = format!("cluster: {n} nodes, {n} alive", n = hosts.len());
        loop {
            let text = cluster.status(hosts, ferry)?;
            if text.contains(&want) || (hosts.len() == 1 && text.contains("alive")) {
                return Ok(cluster);
            }
            if std::time::Instant::now() >= end {
                return Err(format!("the cluster did not come up within {within:?}; status:\n{text}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Cluster {
    /// The program `exe` (a test binary that is its own job) on host `host`, with `var` set to
    /// `address` (the node it joins) and the cluster's token.
    pub fn job(
        &self,
        hosts: &Hosts,
        host: usize,
        exe: impl AsRef<std::ffi::OsStr>,
        var: &str,
        address: &str,
    ) -> Command {
        let mut cmd = hosts.command(host, exe);
        cmd.env(var, address).env("FERRY_TOKEN", &self.head.token);
        cmd
    }

    /// What `ferry status` (the CLI at `ferry`) prints on the head's host.
    pub fn status(&self, hosts: &Hosts, ferry: &str) -> Result<String, String> {
        let out = hosts
            .command(0, ferry)
            .env("FERRY_TOKEN", &self.head.token)
            .args(["status", "--address", &self.head.address])
            .output()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

/// The child processes of `pid` (a node daemon's workers, its control store).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Makes a test binary its own job: when the environment variable `$var` is set in a process
/// that is not a worker, `$entry(&value)` runs before `main` (the value is the address of the
/// node to join), and ends the process itself. Workers of that job are the same binary and
/// skip it.
#[macro_export]
macro_rules! job {
    ($var:literal, $entry:path) => {
        const _: () = {
            extern "C" fn entry() {
                if std::env::var_os("FERRY_WORKER").is_some() {
                    return;
                }
                if let Ok(address) = std::env::var($var) {
                    $entry(&address);
                }
            }
            #[used]
            #[link_section = ".init_array"]
            static ENTRY: extern "C" fn() = entry;
        };
    };
}

/// Sends signal `sig` to process `pid` (one a test started: SIGSTOP to freeze a node, SIGCONT
/// to thaw it, SIGKILL).
pub fn signal(pid: u32, sig: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: a plain syscall; a stale pid at worst gets a signal meant for another process of
    // ours, which tests avoid by signalling only children they still hold.
    unsafe { kill(pid as i32, sig) };
}

/// A loopback TCP port nothing listens on and nobody else can take while this lives: a
/// socket bound to it that never listens, so a connection there is refused (a port found
/// free and let go may be taken by another test meanwhile).
#[derive(Debug)]
pub struct ClosedPort {
    fd: i32,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        // SAFETY: plain socket calls on a descriptor this function owns; `addr` is a valid
        // sockaddr_in of the size given.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::bind(fd, &addr as *const libc::sockaddr_in as *const libc::sockaddr, len);
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut glen = len;
            let r = libc::getsockname(fd, &mut got as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut glen);
            assert_eq!(r, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort { fd, port: u16::from_be(got.sin_port) }
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this value's own.
        unsafe { libc::close(self.fd) };
    }
}
