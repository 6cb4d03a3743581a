//! Identifiers. All are plain integers so they hash fast and print as fixed-width hex.
//!
//! A [`WorkerId`] is random per process (driver or worker) and so unique across a cluster;
//! a [`TaskId`] is its owner plus a per-owner sequence number; an [`ObjectId`] is the task
//! that creates it plus the return index (`put` objects get a sequence number of their own
//! and index 0). An object's id therefore names its owner, which is what the ownership
//! design needs to route every question about it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A process that can own objects: the driver or a worker.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct WorkerId(pub u64);

/// One node (host) of the cluster.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct NodeId(pub u64);

/// A task, named by its owner and the owner's sequence number.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct TaskId {
    pub owner: WorkerId,
    pub seq: u64,
}

/// An immutable object: the return `index` of `task`.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct ObjectId {
    pub task: TaskId,
    pub index: u32,
}

impl ObjectId {
    /// The process that owns this object (submitted its task or called `put`).
    pub fn owner(&self) -> WorkerId {
        self.task.owner
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "W{self}")
    }
}
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N{self}")
    }
}
impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:016x}", self.owner, self.seq)
    }
}
impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{self}")
    }
}
/// A task id as it is displayed (32 hex digits: its owner's, then its sequence number's).
impl std::str::FromStr for TaskId {
    type Err = String;
    fn from_str(s: &str) -> Result<TaskId, String> {
        let s = s.trim().trim_start_matches('T');
        let bad = || format!("{s:?} is not a task id: it has 32 hex digits, as `ferry list tasks` shows them");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let owner = u64::from_str_radix(&s[..16], 16).map_err(|_| bad())?;
        let seq = u64::from_str_radix(&s[16..], 16).map_err(|_| bad())?;
        Ok(TaskId { owner: WorkerId(owner), seq })
    }
}

/// A process (or job) id as it is displayed (16 hex digits).
impl std::str::FromStr for WorkerId {
    type Err = String;
    fn from_str(s: &str) -> Result<WorkerId, String> {
        let s = s.trim().trim_start_matches('W');
        u64::from_str_radix(s, 16)
            .map(WorkerId)
            .map_err(|_| format!("{s:?} is not a job or worker id: it has 16 hex digits, as `ferry list` shows them"))
    }
}

/// The display form is also the object's file name in the store, so it is fixed-width hex.
impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:04x}", self.task, self.index)
    }
}
impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "O{self}")
    }
}

/// Identifies an actor across the cluster and its restarts.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(proptest_derive::Arbitrary))]
pub struct ActorId(pub u64);

impl ActorId {
    /// A new id for an actor whose entry lives at `home`'s daemon: the high 32 bits are the
    /// home's tag (so any process finds the daemon to ask), the rest is `random`.
    pub fn new(home: NodeId, random: u64) -> ActorId {
        ActorId((Self::tag_of(home) << 32) | (random & 0xffff_ffff))
    }
    /// The tag of the node keeping this actor's entry.
    pub fn home_tag(&self) -> u64 {
        self.0 >> 32
    }
    /// A node's tag, as actor ids carry it.
    pub fn tag_of(node: NodeId) -> u64 {
        node.0 & 0xffff_ffff
    }
}

impl std::fmt::Debug for ActorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "A{:016x}", self.0)
    }
}

/// Reads `n` bytes of OS randomness (for ids and tokens).
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) } == n as isize {
        return buf;
    }
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(&mut buf).is_ok() {
            return buf;
        }
    }
    // Tokens and handshake nonces come from here: without the OS's randomness there is
    // nothing safe to give (every Linux ferry runs on has getrandom).
    panic!("no randomness from the operating system (getrandom and /dev/urandom both failed)")
}

/// A random non-zero 64-bit id.
pub fn random_u64() -> u64 {
    let b = random_bytes(8);
    u64::from_le_bytes(b.try_into().expect("8 bytes")).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_display_is_fixed_width_hex() {
        let id = ObjectId { task: TaskId { owner: WorkerId(1), seq: 2 }, index: 3 };
        let s = id.to_string();
        assert_eq!(s.len(), 16 + 16 + 4);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id.owner(), WorkerId(1));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
