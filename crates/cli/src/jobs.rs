//! `ferry job submit|list|status|logs|stop` (and `ferry submit`, the short form of the
//! first): jobs run on the head as drivers, as Ray's job submission runs them.

use crate::Target;
use clap::{Args, Subcommand};
use ferry_node::client::JobEvent;
use ferry_node::client::JobView;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// What `ferry job submit` and `ferry submit` take.
#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub target: Target,
    /// Start the job and return at once, printing its id (its output goes to its log:
    /// `ferry job logs ID`).
    #[arg(long)]
    pub no_wait: bool,
    /// The job's weight in fair sharing: when jobs together want more CPUs than the cluster
    /// has, each gets a share in proportion to its weight (default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub weight: Option<u32>,
    /// The program and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// Run a job binary on the cluster: it is shipped to the head by content hash (once), runs
    /// there as the job's driver, and its output comes back here. Ctrl-C stops the job.
    Submit(SubmitArgs),
    /// List the jobs the head ran: id, status, exit code, start, end and entrypoint.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one job.
    Status {
        #[command(flatten)]
        target: Target,
        /// The job's id (from `ferry job list`).
        id: u64,
    },
    /// Print a job's output (stdout and stderr, as it printed them).
    Logs {
        #[command(flatten)]
        target: Target,
        /// The job's id (from `ferry job list`).
        id: u64,
        /// Keep printing what it prints until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a job: its driver and whatever it started get SIGTERM, then SIGKILL after a grace
    /// period; its workers, objects and actors (not detached ones) go with it.
    Stop {
        #[command(flatten)]
        target: Target,
        /// The job's id (from `ferry job list`).
        id: u64,
    },
}

/// Runs a `ferry job` command; the exit code.
pub fn run(cmd: JobCmd) -> Result<i32, String> {
    match cmd {
        JobCmd::Submit(a) => submit(&a.target, &a.command, a.no_wait, a.weight),
        JobCmd::List { target } => list(&target).map(|_| 0),
        JobCmd::Status { target, id } => status(&target, id).map(|_| 0),
        JobCmd::Logs { target, id, follow } => logs(&target, id, follow).map(|_| 0),
        JobCmd::Stop { target, id } => {
            let (mut client, _) = target.connect()?;
            client.stop_job(id).map_err(|e| e.to_string())?;
            let end = Instant::now() + Duration::from_secs(30);
            // Said stopped once it has ended (SIGKILL follows SIGTERM after the grace period).
            loop {
                let j = find(&mut client.jobs().map_err(|e| e.to_string())?, id)?;
                if j.ended_ms.is_some() {
                    println!("ferry: job {id} ({}) stopped", j.name);
                    return Ok(0);
                }
                if Instant::now() > end {
                    return Err(format!("job {id} was told to stop but is still running after 30 s"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn find(jobs: &mut Vec<JobView>, id: u64) -> Result<JobView, String> {
    match jobs.iter().position(|j| j.id == id) {
        Some(i) => Ok(jobs.swap_remove(i)),
        None => Err(format!("there is no job {id} on this head: `ferry job list` shows its jobs")),
    }
}

/// `ferry submit` / `ferry job submit`: ship the binary by hash (if the head lacks it), run
/// it; in the foreground pass its output on and return its exit code (a Ctrl-C stops it).
pub fn submit(target: &Target, command: &[String], no_wait: bool, weight: Option<u32>) -> Result<i32, String> {
    let program = Path::new(&command[0]);
    let size = std::fs::metadata(program).map_err(|e| format!("cannot read {}: {e}", program.display()))?.len();
    let hash = ferry_node::jobs::hash_file(program).map_err(|e| format!("cannot read {}: {e}", program.display()))?;
    let name = program.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| command[0].clone());
    let (mut client, _) = target.connect()?;
    if client.has_binary(&hash).map_err(|e| e.to_string())? {
        eprintln!("ferry: the head already has {} ({})", program.display(), &hash[..12]);
    } else {
        eprintln!(
            "ferry: uploading {} ({:.1} MiB, {}) to {} ...",
            program.display(),
            size as f64 / 1048576.0,
            &hash[..12],
            client.addr()
        );
        let t = Instant::now();
        client.put_binary(program, &hash, size).map_err(|e| format!("the upload failed: {e}"))?;
        eprintln!("ferry: uploaded in {:.2?}", t.elapsed());
    }
    if no_wait {
        let (job, pid) = client.start_job(&hash, &name, &command[1..], weight).map_err(|e| e.to_string())?;
        let state = match pid {
            0 => "queued on the head (it starts when a running job ends)".to_string(),
            pid => format!("running on the head (pid {pid})"),
        };
        eprintln!(
            "ferry: job {job} ({name}) {state}; see it with `ferry job logs {job} --follow`, \
             stop it with `ferry job stop {job}`"
        );
        println!("{job}");
        return Ok(0);
    }
    let job_id = Arc::new(AtomicU64::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(target.clone(), job_id.clone(), stopping.clone());
    let started = Instant::now();
    let end = client
        .run_job(&hash, &name, &command[1..], weight, |event| match event {
            JobEvent::Queued { job, ahead } => {
                job_id.store(job, Ordering::SeqCst);
                eprintln!(
                    "ferry: job {job} ({name}) queued: the head runs as many jobs as it allows, {ahead} wait before it"
                )
            }
            JobEvent::Started { job, pid } => {
                job_id.store(job, Ordering::SeqCst);
                eprintln!("ferry: job {job} ({name}) running on the head (pid {pid}); Ctrl-C stops it")
            }
            JobEvent::Output { stderr: true, data } => drop(std::io::stderr().write_all(data)),
            JobEvent::Output { stderr: false, data } => drop(std::io::stdout().write_all(data)),
            // A long wait shows progress rather than silence.
            JobEvent::Quiet { job, running_for } => {
                eprintln!("ferry: job {job} ({name}) still running ({running_for:.0?} so far)")
            }
        })
        .map_err(|e| e.to_string())?;
    let _ = std::io::stdout().flush();
    if stopping.load(Ordering::SeqCst) {
        eprintln!("ferry: job {} ({name}) stopped after {:.1?}", end.job, started.elapsed());
        return Ok(130);
    }
    eprintln!("ferry: job {} ({name}) ended ({}) after {:.1?}", end.job, end.detail, started.elapsed());
    Ok(end.code.unwrap_or(1))
}

/// On Ctrl-C while a job runs in the foreground: the job is stopped (on a connection of its
/// own, while the submit goes on printing until the job ends); a second Ctrl-C leaves at
/// once.
fn watch_ctrl_c(target: Target, job: Arc<AtomicU64>, stopping: Arc<AtomicBool>) {
    let pressed = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGINT, pressed.clone()) {
        eprintln!("ferry: warning: Ctrl-C will not stop the job ({e}); use `ferry job stop`");
        return;
    }
    let _ = std::thread::Builder::new().name("ferry-ctrl-c".into()).spawn(move || loop {
        std::thread::sleep(Duration::from_millis(50));
        if !pressed.swap(false, Ordering::SeqCst) {
            continue;
        }
        let id = job.load(Ordering::SeqCst);
        if stopping.swap(true, Ordering::SeqCst) || id == 0 {
            if id != 0 {
                eprintln!("ferry: leaving job {id} to stop on its own (`ferry job status {id}`)");
            }
            std::process::exit(130);
        }
        eprintln!(
            "ferry: Ctrl-C: stopping job {id}: its driver, workers, objects and actors go (Ctrl-C again to leave now)"
        );
        let stopped = target.connect().and_then(|(mut c, _)| c.stop_job(id).map_err(|e| e.to_string()));
        if let Err(e) = stopped {
            eprintln!("ferry: cannot stop job {id}: {e}");
            std::process::exit(130);
        }
    });
}

/// Its entrypoint as typed, without control characters (what came over the network must
/// not reach the terminal as escapes).
pub fn entrypoint(j: &JobView) -> String {
    let clean = |a: &str| a.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
    std::iter::once(&j.name).chain(&j.args).map(|a| clean(a)).collect::<Vec<_>>().join(" ")
}

fn list(target: &Target) -> Result<(), String> {
    let (mut client, _) = target.connect()?;
    let jobs = client.jobs().map_err(|e| e.to_string())?;
    if jobs.is_empty() {
        println!("no jobs yet (`ferry job submit -- ./program args` runs one)");
        return Ok(());
    }
    println!("{:<5} {:<10} {:<5} {:<20} {:<20} ENTRYPOINT", "JOB", "STATUS", "EXIT", "START (UTC)", "END (UTC)");
    for j in &jobs {
        let exit = j.code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let end = j.ended_ms.map(utc).unwrap_or_else(|| "-".into());
        println!("{:<5} {:<10} {:<5} {:<20} {:<20} {}", j.id, j.status(), exit, utc(j.started_ms), end, entrypoint(j));
    }
    Ok(())
}

fn status(target: &Target, id: u64) -> Result<(), String> {
    let (mut client, _) = target.connect()?;
    let j = find(&mut client.jobs().map_err(|e| e.to_string())?, id)?;
    println!("job {}: {}", j.id, j.status());
    println!("  entrypoint: {}", entrypoint(&j));
    println!("  binary:     {} (pid {} on the head)", &j.hash[..j.hash.len().min(12)], j.pid);
    println!("  started:    {} UTC", utc(j.started_ms));
    match j.ended_ms {
        Some(e) => {
            println!(
                "  ended:      {} UTC, after {:.1?}",
                utc(e),
                Duration::from_millis(e.saturating_sub(j.started_ms))
            )
        }
        None => println!("  running for {:.1?}", Duration::from_millis(now_ms().saturating_sub(j.started_ms))),
    }
    match (j.ended_ms, j.code) {
        (Some(_), Some(c)) => println!("  exit code:  {c}"),
        (Some(_), None) => println!("  exit code:  none (ended by a signal, or the head restarted under it)"),
        (None, _) => {}
    }
    println!("  output:     `ferry job logs {id}`");
    Ok(())
}

fn logs(target: &Target, id: u64, follow: bool) -> Result<(), String> {
    let (mut client, _) = target.connect()?;
    let mut offset = 0;
    let mut out = std::io::stdout();
    loop {
        let (data, next, ended) = client.job_log(id, offset).map_err(|e| e.to_string())?;
        offset = next;
        if !data.is_empty() {
            out.write_all(&data).map_err(|e| e.to_string())?;
            let _ = out.flush();
            continue;
        }
        if ended || !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC), by the proleptic Gregorian calendar
/// (the days-to-civil conversion of H. Hinnant's date algorithms).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_dates_are_right_across_leap_years_and_centuries() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_798_760_557_000), "2026-12-31 23:42:37");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01 00:00:00");
    }
}
