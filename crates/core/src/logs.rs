//! A worker's standard output and error go to the drivers' terminals: both are pipes read by
//! a thread each, which prefixes every line with what the worker runs (`(square pid=1234)`,
//! as Ray does) and sends the lines to the node daemon, which passes them on.

use crate::runtime::Runtime;
use ferry_proto::msg::ToNode;
use ferry_types::sync::MutexExt;
use std::io::{BufRead, BufReader};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

/// What the worker runs now (the last task's function, or its actor's type).
static LABEL: Mutex<Option<Arc<str>>> = Mutex::new(None);

/// Names what runs from now on.
pub(crate) fn set_label(label: &str) {
    // Called per task: allocates only when the label changes.
    let mut l = LABEL.locked();
    if l.as_deref() != Some(label) {
        *l = Some(Arc::from(label));
    }
}

/// Points standard output and error at pipes read by forwarding threads. On failure the
/// worker keeps writing where it did.
pub(crate) fn capture(rt: &'static Runtime) {
    for (fd, stderr) in [(1, false), (2, true)] {
        let mut p = [0i32; 2];
        // SAFETY: plain syscalls on descriptors this function owns; dup2 replaces fd 1 or 2
        // atomically, so a concurrent write goes either to the old or to the new file.
        let ok = unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) == 0 && libc::dup2(p[1], fd) >= 0 };
        if !ok {
            continue;
        }
        // SAFETY: p[1] was duplicated onto `fd`; the original is closed here, and p[0] is
        // owned by the reader from now on.
        unsafe { libc::close(p[1]) };
        let file = unsafe { std::fs::File::from_raw_fd(p[0]) };
        let _ = std::thread::Builder::new().name("ferry-log".into()).spawn(move || forward(rt, file, stderr));
    }
}

fn forward(rt: &'static Runtime, file: std::fs::File, stderr: bool) {
    let pid = std::process::id();
    let mut r = BufReader::new(file);
    let mut line = String::new();
    loop {
        let mut lines = Vec::new();
        // One line (waiting for it), then whatever else is already read, in one message.
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) if lines.is_empty() => return,
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let label = LABEL.locked().clone();
            let text = line.trim_end_matches(['\n', '\r']);
            lines.push(format!("({} pid={pid}) {text}", label.as_deref().unwrap_or("worker")));
            if r.buffer().is_empty() || lines.len() >= 256 {
                break;
            }
        }
        rt.send_node(&ToNode::Log { stderr, lines, node: None });
    }
}
