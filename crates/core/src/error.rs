//! The error every ferry call returns: defined with the wire types (`ferry_proto::error`),
//! since a failed object carries it to its borrowers.

pub use ferry_proto::error::Error;

/// Result of a ferry call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
