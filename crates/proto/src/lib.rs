//! ferry's wire protocol: the only types that travel between processes.
//!
//! **Architecture Invariant:** every byte that crosses a socket is a frame written by
//! [`frame`]: a little-endian `u32` length followed by a postcard-encoded message from
//! [`msg`]. Frames larger than the configured maximum are refused before any allocation,
//! and a frame that fails to decode closes that connection only; nothing here panics on
//! input.
//!
//! Every connection starts with a handshake (`conn`): a [`msg::Hello`] with the protocol
//! version and a nonce, a challenge in which the accepting side proves it holds the cluster
//! token, the connecting side's proof ([`msg::HelloProof`]), and a welcome. The token never
//! crosses the wire.

pub mod conn;
pub mod error;
pub mod fail;
pub mod frame;
#[cfg(all(test, feature = "arbitrary"))]
mod fuzz;
pub mod groups;
pub mod ids;
pub mod layout;
pub mod listen;
pub mod msg;
pub mod state;
pub mod views;

pub use conn::{Addr, Conn, Stream};
pub use ferry_types::{
    ActorId, GroupStrategy, NodeId, ObjectId, Placement, Priority, Shape, TaskId, WorkerId, CPU, MEMORY,
};
pub use frame::{FrameError, FrameReader};

/// Version of the wire protocol; peers with another version are refused at the handshake.
///
/// It covers every type in [`msg`], the [`error::Error`] a failed object carries, and the
/// encodings of refs and actor handles inside values ([`msg::RefWire`], [`msg::HandleWire`]).
pub const PROTOCOL_VERSION: u32 = 9;
/// First bytes of every `Hello`, so a stray client (an HTTP probe, say) is told apart at once.
pub const MAGIC: [u8; 4] = *b"FRY1";
/// Default maximum frame size: small values travel inline, large ones through the store,
/// so no legitimate frame comes near it.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;
