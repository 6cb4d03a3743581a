//! Identifiers: the base crate's (`ferry_types::ids`), here under their wire names.

pub use ferry_types::ids::*;
