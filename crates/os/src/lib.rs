//! What ferry asks of the host, done safely on a machine shared with other users.
//!
//! Every file ferry keeps in a shared place (`/tmp`, `/dev/shm`) lives in a directory of
//! this user's that ferry made itself, private (mode 0700), and checked each time it is used:
//! a directory another user created first, or one others can write, is refused with an error
//! that says what to do, never adopted (as ssh treats `~/.ssh`). See SECURITY.md.
//!
//! - [`runtime_dir`], [`shm_dir`]: this user's directories for ferry (sockets, tokens, logs,
//!   spilled objects, a head's state; the object store), `$TMPDIR/ferry-<uid>` and
//!   `/dev/shm/ferry-<uid>`.
//! - [`private_dir`]: makes or checks one private directory.
//! - [`write_secret`], [`read_secret`]: files only this user can read, written without
//!   following links and read only if nobody else could have written them.
//! - [`SessionDir`]: a directory for one running session, locked (`flock`) for the life of
//!   the process that made it; [`sweep`] removes those whose process is gone. A lock, not a
//!   pid, decides: it is the same in every PID namespace and is released by the kernel when
//!   the process dies.
//! - [`raise_fd_limit`]: the soft limit on open files up to the hard one.
//! - [`logging`]: the subscriber for ferry's `tracing` events.

pub mod local;
pub mod logging;

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn refused(path: &Path, why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("refusing to use {}: {why}", path.display()))
}

/// Checks that `meta` (of `path`, not following links) is a directory of this user that no
/// one else can read or write.
fn check_private_dir(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let me = euid();
    if meta.file_type().is_symlink() {
        return Err(refused(
            path,
            "it is a symbolic link, which another user may have planted; remove it, or point ferry elsewhere \
             (XDG_RUNTIME_DIR or TMPDIR)"
                .into(),
        ));
    }
    if !meta.is_dir() {
        return Err(refused(path, "it is not a directory; remove it".into()));
    }
    if meta.uid() != me {
        return Err(refused(
            path,
            format!(
                "it belongs to uid {}, not to this user (uid {me}): another user may have made it to read or \
                 replace ferry's files; remove it (rm -r {}) or point ferry elsewhere (XDG_RUNTIME_DIR or TMPDIR)",
                meta.uid(),
                path.display()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refused(
            path,
            format!(
                "its mode is {mode:04o}, so other users can reach what ferry keeps there (tokens, sockets); \
                 make it private (chmod 700 {}) or remove it",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Checks every ancestor of `path` (absolute): each must belong to root or this user, and
/// one that others may write must be sticky (like `/tmp`), so nobody else can rename or
/// replace what is below it.
fn check_ancestors(path: &Path) -> io::Result<()> {
    let me = euid();
    let mut cur = path.parent();
    while let Some(dir) = cur {
        if dir.as_os_str().is_empty() {
            break;
        }
        let meta = std::fs::symlink_metadata(dir)?;
        let mode = meta.permissions().mode();
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(refused(
                path,
                format!(
                    "{} belongs to uid {}, who could replace anything below it; use a directory of this user's \
                     (set XDG_RUNTIME_DIR or TMPDIR)",
                    dir.display(),
                    meta.uid()
                ),
            ));
        }
        if others_write && !sticky {
            return Err(refused(
                path,
                format!(
                    "{} (mode {:04o}) can be written by other users and is not sticky, so they could replace \
                     anything below it; use a private directory (set XDG_RUNTIME_DIR or TMPDIR)",
                    dir.display(),
                    mode & 0o7777
                ),
            ));
        }
        cur = dir.parent();
    }
    Ok(())
}

/// `path` made absolute, with its parent's links resolved: the ancestors then checked are the
/// real ones (a link in the chain, which its owner could point elsewhere, is not followed
/// later). The last component is kept as it is: it is checked not to be a link itself.
fn absolute(path: &Path) -> io::Result<PathBuf> {
    let path = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)?.join(name)),
        _ => Ok(path),
    }
}

fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("a path with a NUL byte"))?;
    // SAFETY: `c` is a valid C string for the call.
    if unsafe { libc::mkdir(c.as_ptr(), mode as libc::mode_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `path` a private directory of this user (mode 0700), or checks that it already is
/// one: a directory (not a link) owned by this user with no access for anyone else, under
/// ancestors that nobody else can change. Its parent must exist. Returns the absolute path.
pub fn private_dir(path: &Path) -> io::Result<PathBuf> {
    let path = absolute(path)?;
    check_ancestors(&path)?;
    match mkdir(&path, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))),
    }
    check_private_dir(&path, &std::fs::symlink_metadata(&path)?)?;
    Ok(path)
}

/// Makes `path` and any missing parents private directories of this user, checking each.
/// For directories a user names (`--state-dir`, a spill directory): existing ancestors are
/// checked as in [`private_dir`]'s, new ones are made 0700.
pub fn private_dir_all(path: &Path) -> io::Result<PathBuf> {
    let path = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    // The missing ancestors, deepest first; made shallowest first.
    let mut missing = Vec::new();
    let mut cur = path.parent();
    while let Some(p) = cur.filter(|p| std::fs::symlink_metadata(p).is_err()) {
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.iter().rev() {
        private_dir(p)?;
    }
    private_dir(&path)
}

/// This user's directory for ferry's sockets, tokens, logs, spilled objects and a head's
/// state: `$TMPDIR/ferry-<uid>` (`/tmp/ferry-<uid>`); made private, or checked.
///
/// Not `$XDG_RUNTIME_DIR`: it is a small tmpfs (spilled objects would fill memory, not disk)
/// that systemd removes when the user's last login session ends, and a node started from an
/// ssh session outlives it; it would lose its sockets and its state at logout.
pub fn runtime_dir() -> io::Result<PathBuf> {
    runtime_dir_in(&std::env::temp_dir())
}

/// [`runtime_dir`] in the shared directory `tmp` (as with `TMPDIR=tmp`): `tmp/ferry-<uid>`.
pub fn runtime_dir_in(tmp: &Path) -> io::Result<PathBuf> {
    private_dir(&tmp.join(format!("ferry-{}", euid())))
}

/// This user's directory for object stores: `/dev/shm/ferry-<uid>` (shared memory), or
/// `shm` in [`runtime_dir`] where there is no `/dev/shm`; made private, or checked.
pub fn shm_dir() -> io::Result<PathBuf> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        private_dir(&shm.join(format!("ferry-{}", euid())))
    } else {
        private_dir(&runtime_dir()?.join("shm"))
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Uniqueness only (the file is made with O_EXCL): time and pid will do.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b = (t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn open_flags(path: &Path, flags: i32, mode: u32) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("a path with a NUL byte"))?;
    // SAFETY: `c` is a valid C string; the returned descriptor is owned by the `File`.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Creates a new file only this user can read and write (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode
/// 0600): it fails if anything, a link included, is already at `path`.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    open_flags(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))
}

/// Opens `path` to append to it, making it (mode 0600) if it does not exist, never through a
/// link, and only if it belongs to this user and nobody else can read it: for logs.
pub fn open_private_log(path: &Path) -> io::Result<File> {
    // O_NONBLOCK: a FIFO planted there must not block the open (it is refused just after).
    let f =
        open_flags(path, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0o600)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    check_private_file(path, &f)?;
    Ok(f)
}

fn check_private_file(path: &Path, f: &File) -> io::Result<()> {
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(refused(path, "it is not a regular file".into()));
    }
    if meta.uid() != euid() {
        return Err(refused(
            path,
            format!("it belongs to uid {}, not to this user (uid {}); remove it", meta.uid(), euid()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(refused(
            path,
            format!("its mode is {mode:04o}: other users may have read or written it; remove it"),
        ));
    }
    Ok(())
}

/// Writes a secret (a token) to `path`, readable by this user only. The bytes go to a new
/// file made with `O_EXCL|O_NOFOLLOW` beside it, which then replaces `path` (a link planted
/// at `path` is replaced, never written through). `path`'s directory must be private.
pub fn write_secret(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    check_private_dir(dir, &std::fs::symlink_metadata(dir)?)?;
    let name = path.file_name().ok_or_else(|| io::Error::other("a secret file needs a name"))?;
    let tmp = dir.join(format!(".{}.{}", name.to_string_lossy(), random_hex()));
    let res = (|| {
        let mut f = create_private_file(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// Reads a secret file: never through a link, and only if it is a regular file of this user
/// that nobody else can read or write (otherwise someone may have planted it).
pub fn read_secret(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut f = open_flags(path, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)?;
    check_private_file(path, &f)?;
    let mut s = String::new();
    // A token is small: anything large is not one.
    (&mut f).take(1 << 16).read_to_string(&mut s)?;
    Ok(s)
}

/// A directory for one running session (its sockets, or its object store), made new and
/// private, and locked (`flock`) by this process until the value is dropped or the process
/// ends. [`sweep`] removes such directories whose lock nobody holds any more.
#[derive(Debug)]
pub struct SessionDir {
    path: PathBuf,
    /// Holds the lock; the kernel releases it when the process ends, however it ends.
    _lock: File,
}

impl SessionDir {
    /// Makes the directory `name` in `root`: it must not exist yet, and nobody but this user
    /// (and root) may be able to change `root` or its ancestors, bar sticky ones like `/tmp`.
    ///
    /// It is made and locked under a temporary name that [`sweep`] passes over, then renamed
    /// (the lock goes with it): a sweeper never sees it unlocked.
    pub fn create(root: &Path, name: &str) -> io::Result<SessionDir> {
        let path = absolute(&root.join(name))?;
        check_ancestors(&path)?;
        let tmp = path.with_file_name(format!("{NEW_PREFIX}{name}.{}", random_hex()));
        mkdir(&tmp, 0o700).map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", tmp.display())))?;
        let made = (|| {
            let lock = open_flags(&tmp, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(io::Error::last_os_error());
            }
            check_private_dir(&tmp, &std::fs::symlink_metadata(&tmp)?)?;
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("cannot create {}: it exists already", path.display()),
                ));
            }
            // `rename` would replace an empty directory made meanwhile: `renameat2` with
            // RENAME_NOREPLACE where the kernel has it would be tighter, but nobody else can
            // write in `root` (private, or sticky with the name ours to pick).
            std::fs::rename(&tmp, &path)?;
            Ok(lock)
        })();
        match made {
            Ok(lock) => Ok(SessionDir { path, _lock: lock }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    /// [`SessionDir::create`] for a full path.
    pub fn create_at(path: &Path) -> io::Result<SessionDir> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))?;
        SessionDir::create(parent, &name.to_string_lossy())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An exclusive lock on a file (`flock`), held until dropped or the process ends: one head
/// per state directory, say.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock on `path` (made, mode 0600, if missing; never through a link), or
    /// returns `None` if another process holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Lock>> {
        let f = open_flags(path, libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0o600)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
        check_private_file(path, &f)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(Lock { _file: f }))
    }
}

/// Whether the session directory at `path` is locked by a live process.
pub fn is_live(path: &Path) -> bool {
    let Ok(f) = open_flags(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0) else { return false };
    // SAFETY: flock on a descriptor we own; the lock (if taken) goes with `f`.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Session directories are made under this prefix, then renamed (see [`SessionDir::create`]).
const NEW_PREFIX: &str = ".new-";
/// How old a directory left under [`NEW_PREFIX`] must be before [`sweep`] removes it (its
/// maker died in the microseconds between making and renaming it).
const SWEEP_NEW_AFTER: Duration = Duration::from_secs(60);

/// Removes the directories in `root` whose names start with `prefix` and whose session is
/// over (nobody holds their lock), and those its makers left half made. Only this user's are
/// touched. Returns how many it removed.
pub fn sweep(root: &Path, prefix: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(root) else { return 0 };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let half_made = name.starts_with(&format!("{NEW_PREFIX}{prefix}"));
        if !name.starts_with(prefix) && !half_made {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_dir() || meta.uid() != euid() {
            continue;
        }
        if half_made && meta.modified().ok().and_then(|m| m.elapsed().ok()).is_none_or(|age| age < SWEEP_NEW_AFTER) {
            continue;
        }
        if is_live(&path) {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Raises this process's soft limit on open files to the hard limit (a node holds a socket
/// per process it talks to); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Makes this process die (SIGKILL) when the thread that started it ends, and exits at once
/// if its parent is already not `parent` (it died before this call): a worker or a control
/// store never outlives the daemon that started it.
pub fn die_with_parent(parent: Option<i32>) {
    // SAFETY: plain syscalls on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no preconditions.
    if parent.is_some_and(|p| p != unsafe { libc::getppid() }) {
        std::process::exit(1);
    }
}

/// Makes `cmd` start in a session of its own (`setsid`), so that it outlives the terminal
/// session of the process that starts it.
pub fn new_session_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe, the only kind of call allowed between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-os-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn a_private_dir_is_made_0700_and_an_open_one_refused() {
        let d = scratch("dir");
        let p = private_dir(&d.join("a")).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700);
        // Again: checked and accepted.
        private_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 700") && e.contains("0755"), "{e}");
        // A link is refused even when it points at a good directory.
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::set_permissions(d.join("real"), std::fs::Permissions::from_mode(0o700)).unwrap();
        symlink(d.join("real"), d.join("link")).unwrap();
        let e = private_dir(&d.join("link")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn secrets_replace_links_and_planted_files_are_refused() {
        let d = scratch("secret");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        symlink(&victim, d.join("token")).unwrap();
        write_secret(&d.join("token"), b"t0k3n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the link was not followed");
        assert_eq!(read_secret(&d.join("token")).unwrap(), "t0k3n");
        let meta = std::fs::symlink_metadata(d.join("token")).unwrap();
        assert!(meta.is_file() && meta.permissions().mode() & 0o777 == 0o600);
        // A readable file is not trusted as a secret, nor is a link to one.
        std::fs::write(d.join("open"), "x").unwrap();
        std::fs::set_permissions(d.join("open"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_secret(&d.join("open")).unwrap_err().to_string().contains("0644"));
        symlink(d.join("token"), d.join("link")).unwrap();
        assert!(read_secret(&d.join("link")).is_err());
        // A secret goes only into a private directory.
        let open = d.join("opendir");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(write_secret(&open.join("t"), b"x").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sweep_removes_only_sessions_nobody_holds() {
        let d = scratch("sweep");
        let live = SessionDir::create(&d, "s-live").unwrap();
        assert!(SessionDir::create(&d, "s-live").is_err(), "never adopted");
        let dead = SessionDir::create(&d, "s-dead").unwrap();
        let dead_path = dead.path().to_path_buf();
        drop(dead);
        std::fs::create_dir(d.join("other")).unwrap();
        assert!(is_live(live.path()) && !is_live(&dead_path));
        // One left half made: swept only once it is old (its maker may still be at it).
        std::fs::create_dir(d.join(".new-s-half.0")).unwrap();
        assert_eq!(sweep(&d, "s-"), 1);
        assert!(live.path().exists() && !dead_path.exists() && d.join("other").exists());
        assert!(d.join(".new-s-half.0").exists());
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        File::open(d.join(".new-s-half.0")).unwrap().set_modified(old).unwrap();
        assert_eq!(sweep(&d, "s-"), 1);
        drop(live);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_levels_are_all_made_private() {
        let d = scratch("all");
        let deep = d.join("a").join("b").join("c");
        private_dir_all(&deep).unwrap();
        for p in [d.join("a"), d.join("a/b"), deep.clone()] {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700, "{}", p.display());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_link_among_the_ancestors_is_checked_where_it_points() {
        let d = scratch("linked");
        let open = d.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        symlink(&open, d.join("via")).unwrap();
        // The link's target can be changed by others: refused as the target is.
        let e = private_dir(&d.join("via").join("x")).unwrap_err().to_string();
        assert!(e.contains("not sticky") && e.contains("open"), "{e}");
        // A planted FIFO is refused, not waited on.
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_secret(&fifo).is_err());
        assert!(open_private_log(&fifo).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn ancestors_others_can_write_are_refused_unless_sticky() {
        let d = scratch("anc");
        let open = d.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&open.join("x")).unwrap_err().to_string();
        assert!(e.contains("not sticky"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        private_dir(&open.join("x")).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
