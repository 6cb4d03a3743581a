//! What each worker printed, kept on its node (`ferry logs --task|--actor|--node`): a file per
//! worker in the session's private directory (`worker-logs/<worker>.log`), a line per line
//! printed, stamped (`<unix µs> <o|e> <text>`), so a task's output is the lines of its
//! worker's file within its run. Written by a thread of its own (the daemon's lock is never
//! held over a write); a file past [`ROTATE_AT`] bytes becomes `<worker>.log.1` (one older
//! file kept) and a new one starts.

use ferry_proto::WorkerId;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

/// A file's size past which it is rotated.
pub const ROTATE_AT: u64 = 8 << 20;

/// Files kept open at most (those of workers that went are closed first).
const MAX_OPEN: usize = 256;

/// Lines a worker printed, and when they reached its node.
#[derive(Debug)]
pub struct Lines {
    pub worker: WorkerId,
    pub stderr: bool,
    pub lines: Vec<String>,
    pub at_us: u64,
}

/// The directory of a session's worker logs.
pub fn dir(session_dir: &Path) -> PathBuf {
    session_dir.join("worker-logs")
}

/// A worker's log file.
pub fn file(dir: &Path, worker: WorkerId) -> PathBuf {
    dir.join(format!("{worker}.log"))
}

/// Writes what comes on `rx` until its senders go.
pub fn writer(dir: PathBuf, rx: Receiver<Lines>) {
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            tracing::warn!("workers' output is not kept: cannot make {}: {e}", dir.display());
            return;
        }
    }
    let mut open: HashMap<WorkerId, (std::fs::File, u64)> = HashMap::new();
    for l in rx {
        if !open.contains_key(&l.worker) {
            if open.len() >= MAX_OPEN {
                open.clear();
            }
            let path = file(&dir, l.worker);
            match std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path) {
                Ok(f) => {
                    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    open.insert(l.worker, (f, size));
                }
                Err(e) => {
                    tracing::warn!("cannot keep worker {}'s output in {}: {e}", l.worker, path.display());
                    continue;
                }
            }
        }
        let Some((f, size)) = open.get_mut(&l.worker) else { continue };
        let mut buf = String::new();
        let stream = if l.stderr { 'e' } else { 'o' };
        for line in &l.lines {
            buf.push_str(&format!("{} {stream} {line}\n", l.at_us));
        }
        if f.write_all(buf.as_bytes()).is_ok() {
            *size += buf.len() as u64;
        }
        if *size > ROTATE_AT {
            let path = file(&dir, l.worker);
            let _ = std::fs::rename(&path, path.with_extension("log.1"));
            open.remove(&l.worker);
        }
    }
}

/// Up to `max` bytes of `worker`'s log from `offset` (empty past its end), and its size.
pub fn read(dir: &Path, worker: WorkerId, offset: u64, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file(dir, worker))?;
    let size = f.metadata()?.len();
    f.seek(SeekFrom::Start(offset.min(size)))?;
    let mut data = Vec::new();
    f.take(max as u64).read_to_end(&mut data)?;
    Ok((data, size))
}

/// The logs kept: each worker's, with its bytes.
pub fn list(dir: &Path) -> Vec<(WorkerId, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(WorkerId, u64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = u64::from_str_radix(name.strip_suffix(".log")?, 16).ok()?;
            Some((WorkerId(id), e.metadata().ok()?.len()))
        })
        .collect();
    out.sort_by_key(|(w, _)| w.0);
    out
}

/// A line of a worker's log: when it reached its node, and what was printed.
pub fn parse_line(line: &str) -> Option<(u64, &str)> {
    let (at, rest) = line.split_once(' ')?;
    let (_, text) = rest.split_once(' ')?;
    Some((at.parse().ok()?, text))
}

/// Whether a line of its worker's log is `t`'s: printed under its function's name, from its
/// start (its submission, for a task whose start is not known: a failure's) to its end
/// (`ended_us`, if it ended; lines reach the node a moment after they are printed).
pub fn is_tasks(t: &crate::client::TaskRecord, ended_us: Option<u64>, at: u64, text: &str) -> bool {
    let name = t.info.name.rsplit("::").next().unwrap_or(&t.info.name);
    let start = t.started_us.unwrap_or(t.submitted_us);
    at + 1_000 >= start
        && ended_us.is_none_or(|e| at <= e + 200_000)
        && text.strip_prefix('(').and_then(|r| r.strip_prefix(name)).is_some_and(|r| r.starts_with(" pid="))
}

/// The lines `t` printed, read from its worker's log through `node` (a client of the node it
/// ran on).
pub fn task_lines(
    node: &mut crate::client::Client,
    t: &crate::client::TaskRecord,
) -> Result<Vec<String>, crate::client::ClientError> {
    let Some(worker) = t.worker else { return Ok(Vec::new()) };
    let (mut offset, mut text) = (0, Vec::new());
    loop {
        let (data, next, _) = node.read_worker_log(worker, offset)?;
        if data.is_empty() {
            break;
        }
        offset = next;
        text.extend_from_slice(&data);
    }
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter_map(parse_line)
        .filter(|(at, line)| is_tasks(t, t.ended_us, *at, line))
        .map(|(_, line)| line.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_log_is_stamped_listed_read_in_chunks_and_rotated_past_its_bound() {
        let dir = std::env::temp_dir().join(format!("ferry-worker-logs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        let writer = std::thread::spawn(move || writer(d, rx));
        let w = WorkerId(0xabc);
        tx.send(Lines { worker: w, stderr: false, lines: vec!["(f pid=1) first".into()], at_us: 5 }).unwrap();
        tx.send(Lines { worker: w, stderr: true, lines: vec!["(f pid=1) oops".into()], at_us: 6 }).unwrap();
        // Past the bound: 9 MiB more, in lines of 1 KiB.
        let line = "x".repeat(1024);
        for i in 0..9 * 1024 {
            tx.send(Lines { worker: w, stderr: false, lines: vec![line.clone()], at_us: 10 + i }).unwrap();
        }
        tx.send(Lines { worker: w, stderr: false, lines: vec!["(f pid=1) after".into()], at_us: 99_999 }).unwrap();
        drop(tx);
        writer.join().unwrap();
        // The older file holds the first lines, stamped; the current one the last line.
        let old = std::fs::read_to_string(file(&dir, w).with_extension("log.1")).unwrap();
        assert!(old.starts_with("5 o (f pid=1) first\n6 e (f pid=1) oops\n"), "{}", &old[..64]);
        assert!(old.len() as u64 > ROTATE_AT);
        let (mut all, mut offset) = (Vec::new(), 0);
        let size = loop {
            let (data, size) = read(&dir, w, offset, 1 << 20).unwrap();
            if data.is_empty() {
                break size;
            }
            offset += data.len() as u64;
            all.extend(data);
        };
        assert_eq!(all.len() as u64, size);
        assert!(size < ROTATE_AT, "the current file holds only what came after the rotation: {size} bytes");
        assert!(all.ends_with(b"\n99999 o (f pid=1) after\n"), "the last line is not the last one sent");
        assert_eq!(list(&dir), vec![(w, size)]);
        // Read in chunks from an offset.
        let (part, _) = read(&dir, w, 6, 4).unwrap();
        assert_eq!(part, &all[6..10]);
        assert_eq!(parse_line("99999 o (f pid=1) after"), Some((99_999, "(f pid=1) after")));
        // Private: only this user reads them.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(file(&dir, w)).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
