//! Attacks by another user of the same host, run for real: the attacker is `nobody` (through
//! `setpriv`), the cluster runs as this user (root in CI), and both share a temporary
//! directory made like `/tmp` (mode 1777) that stands for it (`TMPDIR`). Each test is one
//! finding of the hardening issue: the attack must fail, and say why where ferry refuses.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

/// A shared, sticky, world-writable directory standing for `/tmp`; removed on drop.
struct SharedTmp {
    path: PathBuf,
}

impl SharedTmp {
    fn new(tag: &str) -> SharedTmp {
        let path = std::env::temp_dir().join(format!("ferry-attack-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o1777)).unwrap();
        SharedTmp { path }
    }

    /// This user's runtime directory for ferry under it.
    fn runtime(&self) -> PathBuf {
        self.path.join(format!("ferry-{}", ferry_os::euid()))
    }

    /// `ferry` with this directory as its `TMPDIR`.
    fn ferry(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.env("TMPDIR", &self.path).env_remove("FERRY_TOKEN");
        c.env_remove("FERRY_ADDRESS");
        c
    }

    /// A copy of `ferry` that `nobody` can run (the build directory may be out of its reach,
    /// as under `/root`), in a directory of its own.
    fn ferry_for_nobody(&self) -> PathBuf {
        let dir = self.path.join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let to = dir.join("ferry");
        std::fs::copy(env!("CARGO_BIN_EXE_ferry"), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        let check = self.as_nobody(&format!("{} --version", to.display()));
        assert!(check.status.success(), "nobody cannot run ferry: {}", text(&check));
        to
    }

    /// Runs `script` in `sh` as `nobody`, with this directory as its `TMPDIR`.
    fn as_nobody(&self, script: &str) -> Output {
        Command::new("setpriv")
            .args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups"])
            .args(["sh", "-c", script])
            .env("TMPDIR", &self.path)
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("setpriv (util-linux) runs commands as nobody")
    }
}

impl Drop for SharedTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `cmd` to its end, at most `within`; its output.
fn run(mut cmd: Command, within: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            ferry_testkit::signal(pid, 9);
            panic!("{cmd:?} did not end within {within:?}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A node started in the background (`ferry start` without `--block`), stopped (and killed
/// if need be) on drop.
struct Background {
    pid: u32,
    address: String,
    token: String,
    tmp: PathBuf,
}

impl Background {
    fn start(tmp: &SharedTmp, args: &[&str], token_env: Option<&str>) -> Background {
        let mut cmd = tmp.ferry();
        cmd.arg("start").args(args);
        if let Some(t) = token_env {
            cmd.env("FERRY_TOKEN", t);
        }
        let out = run(cmd, T);
        let s = text(&out);
        assert!(out.status.success(), "ferry start failed: {s}");
        let field = |p: &str| s.lines().find_map(|l| l.strip_prefix(p)).map(|v| v.trim().to_string());
        let pid = field("ferry: node started (pid ").and_then(|p| p.trim_end_matches(')').parse().ok());
        Background {
            pid: pid.unwrap_or_else(|| panic!("no pid in {s}")),
            address: field("address: ").unwrap_or_else(|| panic!("no address in {s}")),
            token: field("token: ").unwrap_or_default(),
            tmp: tmp.path.clone(),
        }
    }

    fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| s.split_whitespace().nth(2) != Some("Z"))
            .unwrap_or(false)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.alive() {
            for p in ferry_testkit::children_of(self.pid).into_iter().chain([self.pid]) {
                ferry_testkit::signal(p, 9);
            }
        }
        let _ = &self.tmp;
    }
}

/// The finding: `nobody` makes the head's state directory (and a token in it) before this
/// user starts a head, then runs binaries as this user with `ferry submit`. Now the planted
/// directory is refused with what to do, and once it is gone the head keeps its state and
/// token where `nobody` can neither reach nor guess them.
#[test]
fn a_state_directory_planted_by_another_user_is_refused_never_adopted() {
    let tmp = SharedTmp::new("planted");
    let port = free_port();
    let victim = tmp.path.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    // The attack as found (the old guessable names), and against the new directory.
    let plant = format!(
        "mkdir -p $TMPDIR/ferry-head-{port} && echo evil > $TMPDIR/ferry-head-{port}/token && \
         ln -s {victim} $TMPDIR/ferry-cluster-{port}.token && \
         mkdir -m 700 $TMPDIR/ferry-{uid} && mkdir -m 700 $TMPDIR/ferry-{uid}/head-{port} && \
         echo evil > $TMPDIR/ferry-{uid}/head-{port}/token",
        victim = victim.display(),
        uid = ferry_os::euid()
    );
    let planted = tmp.as_nobody(&plant);
    assert!(planted.status.success(), "the attacker's setup failed: {}", text(&planted));

    let mut cmd = tmp.ferry();
    cmd.args(["start", "--head", "--port", &port.to_string(), "--num-cpus", "1", "--block"]);
    let out = run(cmd, T);
    let said = text(&out);
    assert!(!out.status.success(), "the head started on a directory nobody made: {said}");
    assert!(
        said.contains("refusing to use")
            && said.contains(&format!("belongs to uid {NOBODY}"))
            && said.contains("rm -r"),
        "{said}"
    );

    // As the error says: remove it. The head then starts with a token of its own.
    std::fs::remove_dir_all(tmp.runtime()).unwrap();
    let mut cmd = tmp.ferry();
    cmd.args(["start", "--head", "--port", &port.to_string(), "--num-cpus", "1", "--block"]);
    let head = ferry_testkit::Head::start(cmd, T).unwrap();
    assert_ne!(head.token, "evil");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "nothing was written through the link");
    let mode = std::fs::metadata(tmp.runtime()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // nobody cannot read the token, list the directory, nor use the planted token.
    let ferry = tmp.ferry_for_nobody();
    let ferry = ferry.display();
    let runtime = tmp.runtime();
    let tries = [
        format!("cat {}/cluster-{port}.token", runtime.display()),
        format!("ls {}", runtime.display()),
        format!("cat {}/head-{port}/token", runtime.display()),
        format!("{ferry} submit --address {} --token evil -- /usr/bin/id", head.address),
        format!("{ferry} status --address {}", head.address),
    ];
    for t in &tries {
        let o = tmp.as_nobody(t);
        assert!(!o.status.success(), "nobody succeeded: {t}: {}", text(&o));
    }
    let refused = text(&tmp.as_nobody(&tries[3]));
    assert!(refused.contains("wrong or missing cluster token"), "{refused}");
    drop(head);
}

/// A link planted where ferry writes a secret is replaced, never written through; a secret
/// file others could have written is not read.
#[test]
fn a_token_file_planted_by_another_user_is_neither_written_through_nor_trusted() {
    let tmp = SharedTmp::new("token");
    let port = free_port();
    // This user's runtime directory exists (a first run) and nobody can get into it; its
    // token file can only be planted by this user's own mistake: a link, and an open file.
    let runtime = ferry_os::runtime_dir_in(&tmp.path).unwrap();
    let victim = tmp.path.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, runtime.join(format!("cluster-{port}.token"))).unwrap();
    let mut cmd = tmp.ferry();
    cmd.args(["start", "--head", "--port", &port.to_string(), "--num-cpus", "1", "--block"]);
    let head = ferry_testkit::Head::start(cmd, T).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let file = runtime.join(format!("cluster-{port}.token"));
    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert!(meta.is_file() && meta.permissions().mode() & 0o777 == 0o600, "{meta:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), head.token);
    // A token file others can read is refused as a source of the token.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut st = tmp.ferry();
    st.args(["status", "--address", &head.address]);
    let out = run(st, T);
    assert!(!out.status.success() && text(&out).contains("0644"), "{}", text(&out));
    drop(head);
}

/// What a cluster keeps on disk (job records with their arguments, logs, tokens, binaries,
/// objects) is readable by its user only, and a token given on the command line is not in
/// the arguments of the node that runs on.
#[test]
fn nothing_a_cluster_keeps_is_readable_by_another_user_and_no_token_is_in_argv() {
    let tmp = SharedTmp::new("secrets");
    let port = free_port();
    let head = Background::start(&tmp, &["--head", "--port", &port.to_string(), "--num-cpus", "1"], None);
    // A member joins with the token on its command line (the warned-against way).
    let member = Background::start(
        &tmp,
        &["--address", &head.address, "--token", &head.token, "--port", "0", "--num-cpus", "1"],
        None,
    );
    let mut submit = tmp.ferry();
    submit.env("FERRY_TOKEN", &head.token).args(["submit", "--address", &head.address, "--"]);
    submit.args(["/bin/echo", "--password=hunter2"]);
    let out = run(submit, T);
    assert!(out.status.success() && text(&out).contains("--password=hunter2"), "{}", text(&out));

    // The token is in no process's arguments.
    for pid in [head.pid, member.pid] {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&argv).contains(&head.token), "the token is in the argv of {pid}");
    }
    // Every file under the shared directory and the store is this user's, and nobody reads
    // none of them, nor finds the password or the token anywhere.
    let files = walk(&tmp.path);
    assert!(files.iter().any(|f| f.ends_with("jobs.redb")), "{files:?}");
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with(".log")), "{files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", f.display());
    }
    let script = format!(
        "for f in {}; do if [ -r \"$f\" ]; then echo \"READABLE $f\"; fi; done; \
         grep -rl -e hunter2 -e {} {} /dev/shm 2>/dev/null; true",
        files.iter().map(|f| format!("'{}'", f.display())).collect::<Vec<_>>().join(" "),
        head.token,
        tmp.path.display()
    );
    let seen = tmp.as_nobody(&script);
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), "", "nobody could read these");

    // `ferry stop` stops the whole cluster: the member too.
    let mut stop = tmp.ferry();
    stop.env("FERRY_TOKEN", &head.token).args(["stop", "--address", &head.address]);
    let out = run(stop, T);
    assert!(out.status.success(), "{}", text(&out));
    let end = Instant::now() + T;
    while head.alive() || member.alive() {
        let stat = |p: u32| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            Instant::now() < end,
            "a node outlived ferry stop: {} / {}; stop said: {}",
            stat(head.pid),
            stat(member.pid),
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => out.extend(walk(&p)),
            Ok(m) if m.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// A second head on a port in use is told so, with the pid of the one that runs.
#[test]
fn a_second_head_on_the_same_port_is_told_which_runs() {
    let tmp = SharedTmp::new("second");
    let port = free_port();
    let mut cmd = tmp.ferry();
    cmd.args(["start", "--head", "--port", &port.to_string(), "--num-cpus", "1", "--block"]);
    let first = ferry_testkit::Head::start(cmd, T).unwrap();
    let mut again = tmp.ferry();
    again.args(["start", "--head", "--port", &port.to_string(), "--num-cpus", "1", "--block"]);
    let out = run(again, T);
    let said = text(&out);
    assert!(!out.status.success());
    assert!(said.contains("a head already runs") && said.contains(&format!("pid {}", first.child.id())), "{said}");
    assert!(!said.contains("redb") && !said.contains("port 0"), "{said}");
    // Another program on the port: said so too.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = other.local_addr().unwrap().port();
    let mut cmd = tmp.ferry();
    cmd.args(["start", "--head", "--port", &busy.to_string(), "--num-cpus", "1", "--block"]);
    let said = text(&run(cmd, T));
    assert!(said.contains(&format!("port {busy} on 127.0.0.1 is in use by another program")), "{said}");
    drop(first);
}
