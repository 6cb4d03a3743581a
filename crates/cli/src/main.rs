//! `ferry`: start a node on its own, see its state, stop it. Argument parsing and printing
//! over `ferry_node::{launch, control, client}`.
//!
//! ```text
//! ferry start --head [--host H] [--port P] [--num-cpus N] [--resources k=v,..] [--block]
//! ferry start --address HEAD:PORT [--host H] [--port P] [--token-file F] ...   (joins the head)
//! ferry status [--address H:P] [--token-file F] [--watch [--interval-ms MS]]
//! ferry stop   [--address H:P] [--token-file F] [--node-only]
//! ferry submit [--address H:P] [--token-file F] [--no-wait] -- ./job args...
//! ferry job submit|list|status ID|logs ID [--follow]|stop ID   (see `jobs`)
//! ferry list tasks|jobs|nodes, ferry summary tasks, ferry get task ID   (see `state`)
//! ```
//! Drivers join with `ferry::init(Config::default().address("H:P"))` or `FERRY_ADDRESS`.
//! The token comes from `--token-file`, `FERRY_TOKEN`, or the file `ferry start` wrote in this
//! user's private runtime directory on that host; `--token` works too but is visible to every
//! user of the host in the process list.

mod jobs;
mod state;
mod views;

use clap::{Args, Parser, Subcommand};
use ferry_node::client::{stop_cluster, Client};
use ferry_node::launch::{self, LaunchConfig, Serve};
use ferry_os::local;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_PORT: u16 = 6380;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Start, inspect and stop ferry nodes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a command reaches a node, and the token it shows.
#[derive(Args, Clone, Default)]
pub(crate) struct Target {
    /// The node's address, HOST:PORT (default: FERRY_ADDRESS, else 127.0.0.1:6380).
    #[arg(long)]
    address: Option<String>,
    /// A file holding the cluster token (default: FERRY_TOKEN, else the token file
    /// `ferry start` wrote for this user on this host).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster token itself. Other users of this host can read it in the process list:
    /// prefer --token-file or FERRY_TOKEN.
    #[arg(long)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node on this host. Its workers run the binary of the first driver that joins.
    Start {
        /// Start the head node: other nodes join it.
        #[arg(long)]
        head: bool,
        /// Join the head at HOST:PORT.
        #[arg(long)]
        address: Option<String>,
        /// A file holding the cluster token, to join a head (default: FERRY_TOKEN, else the
        /// head's token file for this user on this host).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The cluster token itself, to join a head. Other users of this host can read it in
        /// the process list: prefer --token-file or FERRY_TOKEN.
        #[arg(long)]
        token: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0 picks a free one).
        #[arg(long, default_value_t = DEFAULT_PORT)]
        port: u16,
        /// CPUs to offer (default: the machine's cores).
        #[arg(long)]
        num_cpus: Option<usize>,
        /// Custom resources, e.g. `gpu=1,disk=2`.
        #[arg(long)]
        resources: Option<String>,
        /// Store capacity in bytes (default 30% of RAM, at most what the store's filesystem
        /// has free).
        #[arg(long)]
        object_store_bytes: Option<u64>,
        /// Stay in the foreground until `ferry stop` (otherwise the node runs in the background
        /// and logs to a file it names).
        #[arg(long)]
        block: bool,
        /// On a head: where its control store (nodes, named actors), its jobs and its token
        /// persist, made private (0700) or refused if others can reach it (default: `head-PORT`
        /// in this user's runtime directory, $TMPDIR/ferry-UID).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// On a head: a node silent this long is declared dead (default 5000; or
        /// FERRY_NODE_TIMEOUT_MS).
        #[arg(long)]
        node_timeout_ms: Option<u64>,
        /// How often this node sends the control store a heartbeat (default 1000, or a fifth
        /// of the timeout on the head; or FERRY_HEARTBEAT_MS).
        #[arg(long)]
        heartbeat_ms: Option<u64>,
        /// A node that cannot reach its head's control store for this long stops by itself
        /// (default 60000; or FERRY_HEAD_GRACE_MS).
        #[arg(long)]
        head_grace_ms: Option<u64>,
        /// Run the control store alone (the head starts it as a process of its own, and starts
        /// it again if it dies).
        #[arg(long, hide = true)]
        control_store: bool,
        /// On a head: the dashboard's port, on the head's host (default 8265, as Ray's; 0 picks
        /// a free one). `ferry start` prints the URL that logs a browser in.
        #[arg(long, default_value_t = ferry_dash::DEFAULT_PORT)]
        dashboard_port: u16,
        /// On a head: serve no dashboard (nor its /metrics).
        #[arg(long)]
        no_dashboard: bool,
    },
    /// Run a job binary on the cluster (the short form of `ferry job submit`): it is shipped
    /// to the head by content hash (once), runs there as the job's driver, and its output
    /// comes back here. Ctrl-C stops the job.
    Submit(jobs::SubmitArgs),
    /// Jobs: submit one, list them, see one's status or output, stop one.
    Job {
        #[command(subcommand)]
        cmd: jobs::JobCmd,
    },
    /// List tasks, jobs or nodes (as `ray list`).
    List {
        #[command(subcommand)]
        what: state::ListWhat,
    },
    /// Counts of tasks by function and state (as `ray summary`).
    Summary {
        #[command(subcommand)]
        what: state::SummaryWhat,
    },
    /// One task in full (as `ray get`).
    Get {
        #[command(subcommand)]
        what: state::GetWhat,
    },
    /// Every object in the cluster: its owner, size, where it is and why it is alive (as
    /// `ray memory`).
    Memory {
        #[command(flatten)]
        target: Target,
        /// Group by the node that stores it, or its owner.
        #[arg(long, value_enum, default_value = "node")]
        group_by: views::GroupBy,
        /// Biggest first, or by id.
        #[arg(long, value_enum, default_value = "size")]
        sort_by: views::SortBy,
        /// At most this many (default 1000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Table or JSON.
        #[arg(long, value_enum, default_value_t)]
        format: state::Format,
    },
    /// What a task, an actor or a worker printed, from its node's log files (as `ray logs`).
    Logs {
        #[command(flatten)]
        target: Target,
        /// The lines of this task's run.
        #[arg(long, conflicts_with_all = ["actor", "node"])]
        task: Option<String>,
        /// The lines of this actor's worker.
        #[arg(long, conflicts_with = "node")]
        actor: Option<String>,
        /// The workers' logs this node keeps (with --worker: one of them).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, requires = "node")]
        worker: Option<String>,
        /// Keep printing until the task ends or the worker goes.
        #[arg(long)]
        follow: bool,
    },
    /// Write the tasks' timeline as Chrome trace-event JSON (as `ray timeline`): a row per
    /// node and worker, a slice per task run, arrows from submission to run. Open it in
    /// https://ui.perfetto.dev or chrome://tracing.
    Timeline {
        #[command(flatten)]
        target: Target,
        /// Only this job's tasks (its id, as `ferry list tasks` shows it).
        #[arg(long)]
        job: Option<String>,
        /// Where to write it.
        #[arg(short, long, default_value = "ferry-timeline.json")]
        output: PathBuf,
    },
    /// Show the node's resources, workers, actors and store, every node of its cluster, and
    /// the jobs it ran.
    Status {
        #[command(flatten)]
        target: Target,
        /// Show it again every interval until interrupted (Ctrl-C), as `watch` would.
        #[arg(long)]
        watch: bool,
        /// The interval of --watch, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
    },
    /// Stop the cluster: every node (members first, then the head and its control store),
    /// with every worker they started.
    Stop {
        #[command(flatten)]
        target: Target,
        /// Stop only the node at the address.
        #[arg(long)]
        node_only: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node's log (its file, when in the background) has the time on each line.
    let style = match cli.cmd {
        Cmd::Start { .. } => ferry_os::logging::Style::Daemon,
        _ => ferry_os::logging::Style::Terminal,
    };
    ferry_os::logging::init(style);
    let r = match cli.cmd {
        Cmd::Submit(a) => {
            warn_token_in_argv(a.target.token.is_some());
            return exit_with(jobs::submit(&a.target, &a.command, a.no_wait, a.weight));
        }
        Cmd::Job { cmd } => return exit_with(jobs::run(cmd)),
        Cmd::List { what } => state::list(what),
        Cmd::Summary { what } => state::summary(what),
        Cmd::Get { what } => state::get(what),
        Cmd::Memory { target, group_by, sort_by, limit, format } => {
            views::memory(&target, group_by, sort_by, limit, format)
        }
        Cmd::Logs { target, task, actor, node, worker, follow } => {
            views::logs(&target, task.as_deref(), actor.as_deref(), node.as_deref(), worker.as_deref(), follow)
        }
        Cmd::Timeline { target, job, output } => state::timeline(&target, job.as_deref(), &output),
        Cmd::Start {
            head,
            address,
            token,
            token_file,
            host,
            port,
            num_cpus,
            resources,
            object_store_bytes,
            block,
            state_dir,
            control_store,
            node_timeout_ms,
            heartbeat_ms,
            head_grace_ms,
            dashboard_port,
            no_dashboard,
        } => {
            // Read where they are used, and inherited by the control store's process.
            for (var, v) in [
                ("FERRY_NODE_TIMEOUT_MS", node_timeout_ms),
                ("FERRY_HEARTBEAT_MS", heartbeat_ms),
                ("FERRY_HEAD_GRACE_MS", head_grace_ms),
            ] {
                if let Some(v) = v {
                    // SAFETY: still one thread: nothing reads the environment concurrently.
                    unsafe { std::env::set_var(var, v.to_string()) };
                }
            }
            let target = Target { address: address.clone(), token: token.clone(), token_file };
            let role = match (head, address) {
                _ if control_store => Ok(Role::Control { state_dir }),
                (true, None) if target.token.is_some() || target.token_file.is_some() => {
                    Err("--token and --token-file are for joining a head (with --address); a head makes its own \
                     token, keeps it in its state directory, and takes FERRY_TOKEN if you want to choose it"
                        .to_string())
                }
                (true, None) => Ok(Role::Head { state_dir, dashboard: (!no_dashboard).then_some(dashboard_port) }),
                (false, Some(a)) => Ok(Role::Member { head: a, target }),
                _ => Err("give either --head, or --address HEAD:PORT to join a head".to_string()),
            };
            warn_token_in_argv(token.is_some() && !control_store);
            let cfg = launch_config(num_cpus, resources.as_deref(), object_store_bytes);
            match (role, cfg) {
                (Err(e), _) | (_, Err(e)) => Err(e),
                (Ok(role), Ok(cfg)) if block => start_blocking(role, &cfg, &host, port),
                (Ok(_), Ok(_)) => start_background(token),
            }
        }
        Cmd::Status { target, watch, interval_ms } => {
            warn_token_in_argv(target.token.is_some());
            match watch {
                false => status(&target),
                true => watch_status(&target, Duration::from_millis(interval_ms.max(100))),
            }
        }
        Cmd::Stop { target, node_only } => {
            warn_token_in_argv(target.token.is_some());
            stop(&target, node_only)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn exit_with(r: Result<i32, String>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry: {e}");
    ExitCode::FAILURE
}

fn warn_token_in_argv(given: bool) {
    if given {
        eprintln!(
            "ferry: warning: --token is visible to every user of this host in the process list; \
             use --token-file or FERRY_TOKEN"
        );
    }
}

impl Target {
    /// The address: given, FERRY_ADDRESS, or the default; it must be HOST:PORT.
    fn address(&self) -> Result<String, String> {
        let a = self
            .address
            .clone()
            .or_else(|| std::env::var("FERRY_ADDRESS").ok().filter(|a| !a.is_empty()))
            .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
        match a.rsplit_once(':').map(|(_, p)| p.parse::<u16>()) {
            Some(Ok(_)) => Ok(a),
            _ => Err(format!("{a:?} is not an address: use HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")),
        }
    }

    /// The token: --token, --token-file, FERRY_TOKEN, or this user's token file for the port.
    fn token(&self, address: &str) -> Result<String, String> {
        let given = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(read_token_file(f)?),
            (None, None) => std::env::var("FERRY_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        local::cluster_token(address, given.as_deref())
    }

    /// Connects to the node it names; returns the token too.
    pub(crate) fn connect(&self) -> Result<(Client, String), String> {
        let address = self.address()?;
        let mut token = String::new();
        let client = Client::probe_and_connect(&address, || {
            token = self.token(&address)?;
            Ok(token.clone())
        })
        .map_err(|e| e.to_string())?;
        Ok((client, token))
    }
}

/// A token from a file the user names (it must be theirs and private, as ssh asks of keys).
fn read_token_file(f: &Path) -> Result<String, String> {
    ferry_os::read_secret(f)
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("cannot read the token from {}: {e}", f.display()))
}

fn parse_resources(s: &str) -> Result<Vec<(String, f64)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("resource {p:?} is not name=amount"))?;
            let v: f64 = v.trim().parse().map_err(|_| format!("resource {p:?}: {v:?} is not a number"))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

enum Role {
    Control { state_dir: Option<PathBuf> },
    Head { state_dir: Option<PathBuf>, dashboard: Option<u16> },
    Member { head: String, target: Target },
}

/// The environment's settings, with the flags' over them.
fn launch_config(cpus: Option<usize>, resources: Option<&str>, store: Option<u64>) -> Result<LaunchConfig, String> {
    let mut cfg = LaunchConfig::from_env();
    if let Some(n) = cpus {
        cfg.cpus = n.max(1);
    }
    cfg.resources = parse_resources(resources.unwrap_or(""))?;
    if let Some(b) = store {
        cfg.store_bytes = Some(b);
    }
    Ok(cfg)
}

/// Runs the node in this process until `ferry stop`.
fn start_blocking(role: Role, cfg: &LaunchConfig, host: &str, port: u16) -> Result<(), String> {
    let mut dashboard = None;
    let how = match role {
        Role::Control { state_dir } => {
            return ferry_node::control::serve_control_store(cfg, host, port, state_dir).map_err(|e| e.to_string())
        }
        Role::Head { state_dir, dashboard: port } => {
            dashboard = port;
            // The control store is this binary again, on the head's host and state.
            let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
            let host = host.to_string();
            let control = Box::new(move |port: u16, dir: &Path| {
                let mut c = std::process::Command::new(&exe);
                c.args(["start", "--control-store", "--block", "--host", &host, "--port", &port.to_string()]);
                c.arg("--state-dir").arg(dir);
                c
            });
            Serve::Head { state_dir, control }
        }
        Role::Member { head, target } => {
            let token = target.token(&head)?;
            Serve::Member { head, token }
        }
    };
    let serving = launch::serve(cfg, host, port, how).map_err(|e| e.to_string())?;
    let addr = serving.addr();
    if let Some((control, pid)) = serving.control() {
        println!("control store: {control} (pid {pid}, started again if it dies)");
    }
    println!("ferry: node started (pid {})", std::process::id());
    println!("address: {addr}");
    println!("token: {}", serving.token());
    println!("join with: ferry::init(ferry::Config::default().address(\"{addr}\")), or FERRY_ADDRESS={addr}");
    println!("the token is in {} (readable by this user only; or give FERRY_TOKEN)", serving.token_file().display());
    let dashboard = dashboard.and_then(|port| start_dashboard(&serving, port));
    println!("ready");
    serving.wait();
    drop(dashboard);
    Ok(())
}

/// Starts the head's dashboard on its host; a dashboard that cannot start (its port taken)
/// is reported, and the head runs without it, as Ray's does.
fn start_dashboard(serving: &launch::Serving, port: u16) -> Option<ferry_dash::Dashboard> {
    let restarts = serving.control_restarts();
    let facts = move || ferry_dash::HeadFacts {
        control_store_restarts: restarts.as_ref().map(|r| r.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0),
    };
    let opts = ferry_dash::DashOptions {
        bind: std::net::SocketAddr::new(serving.addr().ip(), port),
        node: serving.addr().to_string(),
        token: serving.token().to_string(),
        head_facts: Some(std::sync::Arc::new(facts)),
    };
    match ferry_dash::serve(opts) {
        Ok(d) => {
            println!(
                "dashboard: {} (this URL logs a browser in: share it only with who may see the cluster)",
                d.login_url()
            );
            Some(d)
        }
        Err(e) => {
            println!("warning: no dashboard: {e}");
            None
        }
    }
}

/// Starts `ferry start ... --block` in the background (its own session) and returns once it
/// is ready, passing on what it printed. A token given on the command line reaches it in
/// its environment, not in its arguments (which every user can read for the node's life).
fn start_background(token: Option<String>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut args = Vec::new();
    let mut given = std::env::args().skip(1);
    while let Some(a) = given.next() {
        if a == "--token" {
            given.next();
        } else if !a.starts_with("--token=") {
            args.push(a);
        }
    }
    args.push("--block".into());
    let log = launch::start_background(&exe, &args, token.as_deref(), |line| println!("{line}"))
        .map_err(|e| e.to_string())?;
    println!("log: {}", log.display());
    Ok(())
}

/// "1 node", "2 nodes".
fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        _ => format!("{n} {what}s"),
    }
}

/// `ferry status --watch`: the status again every `every`, each under a line with the time
/// (the screen cleared first on a terminal), until interrupted or the node is gone.
fn watch_status(target: &Target, every: Duration) -> Result<(), String> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    loop {
        if tty {
            // Clear the screen and go home, as `watch` does.
            print!("\x1b[2J\x1b[H");
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let s = now.as_secs();
        println!("every {every:.1?}, at {:02}:{:02}:{:02} UTC (Ctrl-C to stop)", s / 3600 % 24, s / 60 % 60, s % 60);
        status(target)?;
        println!();
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

/// Resources as `ferry status` prints them: the plain ones (placement groups' renamed ones
/// are listed with the groups), memory in GiB.
fn resources(s: &ferry_node::client::Shape) -> String {
    let shown: Vec<String> =
        s.0.iter()
            .filter(|(n, _)| !n.contains("_group_"))
            .map(|(n, v)| match n.as_str() {
                ferry_node::client::MEMORY => format!("{n}: {:.1} GiB", *v as f64 / 1000.0 / (1u64 << 30) as f64),
                _ => format!("{n}: {}", *v as f64 / 1000.0),
            })
            .collect();
    format!("{{{}}}", shown.join(", "))
}

fn status(target: &Target) -> Result<(), String> {
    let (mut client, token) = target.connect()?;
    let address = client.addr().to_string();
    let stats = client.stats().map_err(|e| e.to_string())?;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!("node {} at {address}: alive", stats.node.map(|n| n.to_string()).unwrap_or_default());
    println!("  resources: {} available of {}", resources(&stats.available), resources(&stats.total));
    println!("  workers:   {} ({} idle, {} leased)", stats.workers, stats.idle_workers, stats.leased_workers);
    println!("  actors:    {}", stats.actors);
    println!(
        "  store:     {}, {:.1} of {:.1} MiB in memory; {}, {:.1} MiB spilled",
        count(stats.store_objects as usize, "object"),
        mb(stats.store_used_bytes),
        mb(stats.store_capacity_bytes),
        count(stats.spilled_objects as usize, "object"),
        mb(stats.spilled_bytes)
    );
    println!("  waiting lease requests: {}", stats.pending_lease_requests);
    println!(
        "  transfers: {} ({:.1} MiB) sent to other nodes, {} ({:.1} MiB) copied from them",
        count(stats.transfers_out as usize, "object"),
        mb(stats.transfer_bytes_out),
        stats.transfers_in,
        mb(stats.transfer_bytes_in)
    );
    // This node's view (which its scheduling uses), not the control store's: it lags by a
    // heartbeat, and a cluster is up for this node's jobs once this node sees every node.
    let nodes = client.cluster().map_err(|e| e.to_string())?;
    if let Some(nodes) = nodes.filter(|n| n.len() > 1) {
        // The control store keeps the cluster's tables and runs no work: not one of its nodes.
        let (control, work): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|n| n.head);
        let alive = work.iter().filter(|n| n.alive).count();
        println!("cluster: {}, {alive} alive", count(work.len(), "node"));
        for n in work {
            let state = if n.alive { "alive" } else { "dead" };
            println!(
                "  node {} at {}: {state}; {} available of {}; {}, {}; {}, {:.1} MiB ({:.1} MiB spilled); \
                 last heard {} ms ago",
                n.node,
                n.addr,
                resources(&n.available),
                resources(&n.total),
                count(n.workers as usize, "worker"),
                count(n.actors as usize, "actor"),
                count(n.objects as usize, "object"),
                mb(n.object_bytes),
                mb(n.spilled_bytes),
                n.silent_ms
            );
        }
        for c in control {
            println!("control store at {}: {}", c.addr, if c.alive { "alive" } else { "not answering" });
        }
    }
    // Listed from the control store: if it cannot answer now, the rest still stands.
    let groups = client.groups(&token).unwrap_or_else(|e| {
        eprintln!("ferry: cannot list the placement groups now: {e}");
        Vec::new()
    });
    if !groups.is_empty() {
        println!("placement groups: {}", groups.len());
        for g in groups {
            let name = if g.name.is_empty() { String::new() } else { format!(" {:?}", g.name) };
            let bundles: Vec<String> = g
                .bundles
                .iter()
                .map(|(s, n)| format!("{} on {}", resources(s), n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())))
                .collect();
            let why = g.reason.map(|r| format!(" ({r})")).unwrap_or_default();
            println!(
                "  group {:016x}{name} {}: {:?}{why}; bundles: {}",
                g.group,
                g.strategy.name(),
                g.phase,
                bundles.join(", ")
            );
        }
    }
    let jobs = client.jobs().map_err(|e| e.to_string())?;
    if !jobs.is_empty() {
        println!("jobs: {}", jobs.len());
        for j in jobs {
            let state = match (j.status(), j.ended_ms, j.code) {
                (_, Some(_), Some(c)) if !j.stopped => format!("exited with {c}"),
                (_, Some(_), None) if !j.stopped => "ended (signal, or the head restarted)".to_string(),
                (word, ..) => word.to_string(),
            };
            println!(
                "  job {} {} (pid {}, binary {}): {state}",
                j.id,
                jobs::entrypoint(&j),
                j.pid,
                &j.hash[..j.hash.len().min(12)]
            );
        }
    }
    Ok(())
}

/// `ferry stop`: the other nodes of the cluster first (at once, each waited for), then the
/// node at the address; with `node_only`, that node alone.
fn stop(target: &Target, node_only: bool) -> Result<(), String> {
    let (client, token) = target.connect()?;
    let out = stop_cluster(client, &token, node_only, Duration::from_secs(20));
    for a in &out.stopped {
        println!("ferry: node at {a} stopped");
    }
    match out.failed.is_empty() {
        true => Ok(()),
        false => {
            let failed: Vec<String> = out.failed.iter().map(|e| e.to_string()).collect();
            Err(format!("some nodes did not stop: {}", failed.join("; ")))
        }
    }
}
