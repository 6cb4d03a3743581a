//! Jobs started with `ferry submit`, and shipping their binary.
//!
//! `ferry submit -- ./job args` asks the head whether it has a binary of the job's content
//! hash (SHA-256), uploads it if not (raw bytes after a `PutBinary` frame, checked against
//! the hash), then asks the head to run it (`SubmitJob`). The head starts it as the job's
//! driver, joined to the cluster (`FERRY_ADDRESS`, `FERRY_TOKEN`, and `FERRY_EXE_HASH` so
//! that the program it registers carries its hash), and streams what it prints back to
//! `ferry submit` until it exits.
//!
//! Each job runs in a process group of its own; what it prints also goes to its log,
//! `job-logs/job-N.log` in the head's state directory (or session directory), private,
//! read by `JobLogs` (`ferry job logs`). `StopJob` sends the group SIGTERM, then SIGKILL
//! after [`STOP_GRACE`]: the driver going takes its workers, objects and non-detached
//! actors with it (ownership's fate-sharing, as when any driver exits).
//!
//! Other nodes learn the program with its hash (a client's `Register`, `HostActor`): a node
//! that has no file of that hash in its `bin` directory fetches it from the head once
//! (`FetchBinary`), and its workers run that copy. Binaries are named by their hash, so a
//! second job with the same binary ships nothing.

use crate::{ConnId, Node, State};
use ferry_proto::conn::{connect, Addr, Conn, Stream};
use ferry_proto::msg::{FromNode, JobView, ProcKind, Program, ToNode};
use ferry_proto::{FrameReader, WorkerId};
use ferry_types::sync::MutexExt;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The largest job binary accepted (an upload's size is announced before its bytes).
const MAX_BINARY: u64 = 4 << 30;

/// How long a stopped job has to exit after SIGTERM before its group gets SIGKILL
/// (`FERRY_JOB_STOP_GRACE_MS` to change).
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The most log bytes one `JobLog` answer carries.
const LOG_CHUNK: u64 = 1 << 20;

/// A SHA-256 in hex: anything else is refused (it becomes a file name).
pub fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The hex SHA-256 of a file's contents.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Node {
    fn bin_dir(&self) -> PathBuf {
        self.opts.session_dir.join("bin")
    }

    /// The local copy of the binary of `hash`, if this node has one.
    pub(crate) fn binary_path(&self, hash: &str) -> Option<PathBuf> {
        let p = self.bin_dir().join(hash);
        (valid_hash(hash) && p.is_file()).then_some(p)
    }

    /// Reads `size` raw bytes from `rx` into the binary of `hash`, checking the hash; the file
    /// appears (executable) only when complete and right.
    fn receive_binary(&self, rx: &mut FrameReader<Stream>, hash: &str, size: u64) -> Result<PathBuf, String> {
        if !valid_hash(hash) {
            return Err(format!("{hash:?} is not a SHA-256 in hex"));
        }
        if size > MAX_BINARY {
            return Err(format!("a job binary of {size} bytes is over the limit of {MAX_BINARY}"));
        }
        std::fs::create_dir_all(self.bin_dir()).map_err(|e| e.to_string())?;
        let tmp = self.bin_dir().join(format!("{hash}.{:x}.tmp", ferry_proto::ids::random_u64()));
        let r = (|| -> Result<PathBuf, String> {
            let mut f = ferry_os::create_private_file(&tmp).map_err(|e| e.to_string())?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                rx.read_exact_raw(&mut buf[..n]).map_err(|e| format!("upload broke off: {e}"))?;
                h.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                left -= n as u64;
            }
            let got = format!("{:x}", h.finalize());
            if got != hash {
                return Err(format!("the bytes have hash {got}, not {hash}"));
            }
            // Run by this user's processes only.
            f.set_permissions(std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
            let fin = self.bin_dir().join(hash);
            std::fs::rename(&tmp, &fin).map_err(|e| e.to_string())?;
            Ok(fin)
        })();
        let _ = std::fs::remove_file(&tmp);
        r
    }

    /// `PutBinary`, on the uploader's connection (which sends nothing else meanwhile).
    pub(crate) fn put_binary(&self, conn: &Conn, rx: &mut FrameReader<Stream>, req: u64, hash: &str, size: u64) {
        let error = self.receive_binary(rx, hash, size).err();
        let _ = conn.send(&FromNode::Ack { req, error });
    }

    /// `FetchBinary`: the size, then the bytes.
    pub(crate) fn serve_binary(&self, conn: &Conn, hash: &str) {
        let file = self
            .binary_path(hash)
            .ok_or_else(|| format!("no binary {hash} here"))
            .and_then(|p| std::fs::File::open(p).map_err(|e| e.to_string()));
        match file {
            Ok(f) => {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                if conn.send(&FromNode::BinaryData { size, error: None }).is_ok() {
                    let _ = conn.send_file(&f, size);
                }
            }
            Err(error) => {
                let _ = conn.send(&FromNode::BinaryData { size: 0, error: Some(error) });
            }
        }
    }

    /// Where this node runs `p` from: its own copy of the binary of `p`'s hash (fetched from
    /// the head the first time), else `p`'s path (the job was not submitted, or the head does
    /// not have it: then the path must be valid on this host too).
    pub(crate) fn local_program(&self, p: &Program) -> PathBuf {
        let Some(hash) = p.hash.as_deref().filter(|h| valid_hash(h)) else { return p.path.clone() };
        if let Some(path) = self.binary_path(hash) {
            return path;
        }
        if let Some((head, _)) = &self.opts.join {
            match self.fetch_binary(head, hash) {
                Ok(path) => return path,
                Err(e) => {
                    tracing::warn!("cannot fetch binary {hash} from the head: {e}; using {}", p.path.display())
                }
            }
        }
        p.path.clone()
    }

    fn fetch_binary(&self, head: &str, hash: &str) -> Result<PathBuf, String> {
        let (conn, mut rx, _) =
            connect(&Addr::Tcp(head.to_string()), &self.opts.token, WorkerId(self.id.0), self.opts.max_frame)
                .map_err(|e| e.to_string())?;
        rx.get_ref().set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        conn.send(&ToNode::register_tool(ProcKind::Tool)).map_err(|e| e.to_string())?;
        conn.send(&ToNode::FetchBinary { hash: hash.to_string() }).map_err(|e| e.to_string())?;
        let size = loop {
            match rx.read::<FromNode>().map_err(|e| e.to_string())? {
                FromNode::BinaryData { size, error: None } => break size,
                FromNode::BinaryData { error: Some(e), .. } => return Err(e),
                _ => continue,
            }
        };
        let t = std::time::Instant::now();
        let path = self.receive_binary(&mut rx, hash, size)?;
        tracing::info!("fetched the job's binary ({} MiB) from the head in {:.2?}", size >> 20, t.elapsed());
        Ok(path)
    }

    /// `SubmitJob`: starts the binary as a driver of this cluster and streams its output to
    /// the submitter (`conn`); the job goes on if the submitter goes.
    pub(crate) fn submit_job(
        self: &Arc<Self>,
        conn: Arc<Conn>,
        req: u64,
        (hash, name, weight): (&str, &str, Option<u32>),
        args: Vec<String>,
    ) {
        let Some(path) = self.binary_path(hash) else {
            let _ = conn.send(&FromNode::JobEnded {
                job: 0,
                code: None,
                detail: format!("no binary {hash} here: upload it first"),
            });
            return;
        };
        // A name from the network is shown in terminals: printable characters only.
        let name: String = name.chars().filter(|c| !c.is_control()).take(256).collect();
        let Some(queued) = self.wait_for_slot(&conn, req, &name, hash, &args) else { return };
        let address = self.tcp_addr.map(|a| a.to_string()).unwrap_or_default();
        // The driver's id, chosen here so that the job's tasks can be found by its job.
        let driver = WorkerId(ferry_types::random_u64());
        let mut cmd = std::process::Command::new(&path);
        // Its own process group: `StopJob` ends it and whatever it started.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.args(&args)
            .env("FERRY_ADDRESS", &address)
            .env("FERRY_TOKEN", &self.opts.token)
            .env("FERRY_EXE_HASH", hash)
            .env(ferry_types::defaults::JOB_DRIVER_ENV, format!("{}:{driver}", std::process::id()))
            // Its share in fair sharing between jobs (see `ferry::Config::job_weight`).
            .env("FERRY_JOB_WEIGHT", weight.unwrap_or(1).clamp(1, 1_000_000).to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.lock().starting_jobs -= 1;
                if let Some(id) = queued {
                    self.end_queued(id);
                }
                let _ = conn.send(&FromNode::JobEnded { job: 0, code: None, detail: format!("cannot start it: {e}") });
                return;
            }
        };
        let pid = child.id();
        let (job, stop_now) = {
            let mut st = self.lock();
            st.starting_jobs -= 1;
            let id = queued.unwrap_or(st.jobs.len() as u64 + 1);
            // Stopped in the moment between leaving the queue and starting.
            let stopped = st.jobs.iter().any(|j| j.id == id && j.stopped);
            let view = JobView {
                id,
                name,
                hash: hash.to_string(),
                args,
                pid,
                started_ms: now_ms(),
                ended_ms: None,
                code: None,
                stopped,
                driver,
            };
            self.record_job(&view);
            match st.jobs.iter_mut().find(|j| j.id == id) {
                Some(j) => *j = view,
                None => st.jobs.push(view),
            }
            (id, stopped)
        };
        if stop_now {
            signal_group(pid, libc::SIGTERM);
        }
        tracing::info!("job {job} started (pid {pid}, binary {})", &hash[..12]);
        let log = match self.open_job_log(job) {
            Ok(f) => Some(Arc::new(std::sync::Mutex::new(f))),
            Err(e) => {
                tracing::warn!("job {job}: its output is not logged: {e}");
                None
            }
        };
        let _ = conn.send(&FromNode::JobStarted { req, job, pid });
        let mut pipes = Vec::new();
        if let Some(out) = child.stdout.take() {
            pipes.push((false, Box::new(out) as Box<dyn Read + Send>));
        }
        if let Some(err) = child.stderr.take() {
            pipes.push((true, Box::new(err) as Box<dyn Read + Send>));
        }
        let readers: Vec<_> = pipes
            .into_iter()
            .map(|(stderr, mut pipe)| {
                let conn = conn.clone();
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = pipe.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if let Some(f) = &log {
                            let _ = f.locked().write_all(&buf[..n]);
                        }
                        // The submitter may be gone (`--no-wait`, or it was stopped): the job goes on.
                        let _ = conn.send(&FromNode::JobOutput { job, stderr, data: buf[..n].to_vec() });
                    }
                })
            })
            .collect();
        let node = self.clone();
        let _ = std::thread::Builder::new().name("ferry-job".into()).spawn(move || {
            let status = child.wait();
            for r in readers {
                let _ = r.join();
            }
            let (code, detail) = match status {
                Ok(s) => (s.code(), s.to_string()),
                Err(e) => (None, e.to_string()),
            };
            {
                let mut st = node.lock();
                if let Some(j) = st.jobs.iter_mut().find(|j| j.id == job) {
                    j.ended_ms = Some(now_ms());
                    j.code = code;
                    let j = j.clone();
                    node.record_job(&j);
                }
            }
            tracing::info!("job {job} ended ({detail})");
            let _ = conn.send(&FromNode::JobEnded { job, code, detail });
        });
    }

    /// The queue of jobs (ray#41241): while `FERRY_MAX_RUNNING_JOBS` jobs run, a submitted job
    /// is recorded as queued (pid 0), told so, and waits here, on its submitter's connection
    /// thread, for its turn (first come, first started). `Some(Some(id))`: it waited as job
    /// `id`; `Some(None)`: it did not wait; `None`: it was stopped while it waited.
    fn wait_for_slot(&self, conn: &Conn, req: u64, name: &str, hash: &str, args: &[String]) -> Option<Option<u64>> {
        let max: usize = ferry_types::defaults::env("FERRY_MAX_RUNNING_JOBS").unwrap_or(usize::MAX).max(1);
        let running =
            |st: &State| st.starting_jobs + st.jobs.iter().filter(|j| j.pid != 0 && j.ended_ms.is_none()).count();
        let (id, ahead) = {
            let mut st = self.lock();
            let waiting = st.jobs.iter().any(|j| j.pid == 0 && j.ended_ms.is_none());
            if running(&st) < max && !waiting {
                st.starting_jobs += 1;
                return Some(None);
            }
            let id = st.jobs.len() as u64 + 1;
            let ahead = st.jobs.iter().filter(|j| j.pid == 0 && j.ended_ms.is_none()).count() as u32;
            let view = JobView {
                id,
                name: name.to_string(),
                hash: hash.to_string(),
                args: args.to_vec(),
                pid: 0,
                started_ms: now_ms(),
                ended_ms: None,
                code: None,
                stopped: false,
                driver: WorkerId(0),
            };
            self.record_job(&view);
            st.jobs.push(view);
            tracing::info!("job {id} queued: {max} jobs run already, {ahead} wait before it");
            (id, ahead)
        };
        // Not under the lock: a submitter that does not read must not stall the node.
        let _ = conn.send(&FromNode::JobQueued { req, job: id, ahead });
        loop {
            {
                let mut st = self.lock();
                let me = st.jobs.iter().find(|j| j.id == id)?;
                if me.stopped {
                    drop(st);
                    self.end_queued(id);
                    let detail = "stopped while it waited in the queue of jobs".to_string();
                    let _ = conn.send(&FromNode::JobEnded { job: id, code: None, detail });
                    return None;
                }
                let first = st.jobs.iter().filter(|j| j.pid == 0 && j.ended_ms.is_none()).all(|j| j.id >= id);
                if first && running(&st) < max {
                    st.starting_jobs += 1;
                    return Some(Some(id));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A queued job that will not run: it ended.
    fn end_queued(&self, id: u64) {
        let mut st = self.lock();
        if let Some(j) = st.jobs.iter_mut().find(|j| j.id == id) {
            j.ended_ms = Some(now_ms());
            let j = j.clone();
            self.record_job(&j);
        }
    }

    fn job_log_path(&self, job: u64) -> PathBuf {
        let dir = self.opts.state_dir.as_ref().unwrap_or(&self.opts.session_dir);
        dir.join("job-logs").join(format!("job-{job}.log"))
    }

    /// A new private log file for `job` (one left by an earlier head of the same id goes).
    fn open_job_log(&self, job: u64) -> std::io::Result<std::fs::File> {
        let path = self.job_log_path(job);
        if let Some(dir) = path.parent() {
            ferry_os::private_dir(dir)?;
        }
        let _ = std::fs::remove_file(&path);
        ferry_os::create_private_file(&path)
    }

    /// `StopJob`: SIGTERM to the job's process group, SIGKILL after the grace period if it
    /// has not ended by then.
    pub(crate) fn stop_job(self: &Arc<Self>, conn: &Conn, req: u64, job: u64) {
        let pid = {
            let mut st = self.lock();
            match st.jobs.iter_mut().find(|j| j.id == job) {
                None => Err(format!("there is no job {job} on this head: `ferry job list` shows its jobs")),
                Some(j) if j.ended_ms.is_some() => Err(format!("job {job} ({}) has ended already", j.name)),
                // Queued: it ends where it waits (its pid 0 is no process group to signal).
                Some(j) if j.pid == 0 => {
                    j.stopped = true;
                    let j = j.clone();
                    self.record_job(&j);
                    Err(String::new())
                }
                Some(j) => {
                    j.stopped = true;
                    let (j, pid) = (j.clone(), j.pid);
                    self.record_job(&j);
                    Ok(pid)
                }
            }
        };
        let error = match pid {
            Err(e) if e.is_empty() => None,
            Err(e) => Some(e),
            Ok(pid) => {
                tracing::info!("job {job}: stopping it (SIGTERM to its process group {pid})");
                signal_group(pid, libc::SIGTERM);
                let grace = std::env::var("FERRY_JOB_STOP_GRACE_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_millis)
                    .unwrap_or(STOP_GRACE);
                let node = Arc::downgrade(self);
                let _ = std::thread::Builder::new().name("ferry-job-stop".into()).spawn(move || {
                    std::thread::sleep(grace);
                    // Only while the job has not ended: its group id is then still its own.
                    let running = node
                        .upgrade()
                        .is_some_and(|n| n.lock().jobs.iter().any(|j| j.id == job && j.ended_ms.is_none()));
                    if running {
                        tracing::warn!("job {job} did not exit within {grace:?} of SIGTERM: SIGKILL");
                        signal_group(pid, libc::SIGKILL);
                    }
                });
                None
            }
        };
        let _ = conn.send(&FromNode::Ack { req, error });
    }

    /// `JobLogs`: up to [`LOG_CHUNK`] bytes of the job's log from `offset`.
    pub(crate) fn job_logs(&self, conn: &Conn, req: u64, job: u64, offset: u64) {
        let ended = self.lock().jobs.iter().find(|j| j.id == job).map(|j| j.ended_ms.is_some());
        let reply = match ended {
            None => FromNode::JobLog {
                req,
                data: Vec::new(),
                next: offset,
                ended: true,
                error: Some(format!("there is no job {job} on this head: `ferry job list` shows its jobs")),
            },
            Some(ended) => match read_from(&self.job_log_path(job), offset) {
                Ok(data) => FromNode::JobLog { req, next: offset + data.len() as u64, data, ended, error: None },
                Err(e) => FromNode::JobLog {
                    req,
                    data: Vec::new(),
                    next: offset,
                    ended: true,
                    error: Some(format!("job {job}'s log cannot be read: {e}")),
                },
            },
        };
        let _ = conn.send(&reply);
    }

    /// `Jobs`.
    pub(crate) fn jobs(&self, st: &crate::State, conn: ConnId, req: u64) {
        self.send(st, conn, &FromNode::Jobs { req, jobs: st.jobs.clone() });
    }
}

impl Node {
    /// Jobs and their binaries (on a head), and a request to stop the node. Routed here by `handle`.
    pub(crate) fn on_jobs(&self, st: &mut State, conn: ConnId, msg: ToNode) {
        match msg {
            ToNode::HaveBinary { req, hash } => {
                let error = self.binary_path(&hash).is_none().then(|| format!("no binary {hash} here"));
                self.send(st, conn, &FromNode::Ack { req, error });
            }
            ToNode::Jobs { req } => self.jobs(st, conn, req),
            ToNode::StopNode => self.request_stop(),
            // Routed elsewhere by `handle`.
            _ => {}
        }
    }

    /// Persists a job's record (on a head with a state directory).
    pub(crate) fn record_job(&self, j: &JobView) {
        if let Some(c) = &self.tables {
            if let Err(e) = c.put_job(j) {
                tracing::error!("control store: cannot record job {}: {e}", j.id);
            }
        }
    }
}

/// Sends `sig` to the process group `pgid` (a job's: its leader's pid).
fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: a plain syscall on a process group this node started.
    unsafe { libc::kill(-(pgid as i32), sig) };
}

/// Up to [`LOG_CHUNK`] bytes of the file from `offset` (none if it is shorter).
fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Seek;
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    f.take(LOG_CHUNK).read_to_end(&mut data)?;
    Ok(data)
}
