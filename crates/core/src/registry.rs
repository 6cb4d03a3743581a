//! The functions a worker can run: every `#[ferry::remote]` function of the binary, collected
//! at link time under a stable id (its module path and name).
//!
//! **Architecture Invariant:** a task names a registered id, never code; an id this binary
//! does not have is an `UnknownFunction` error for that task only.

use crate::bytes::ArgData;
use crate::codec::Backing;
use crate::error::Error;
use ferry_proto::msg::TaskError;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// One remote function, as the `#[ferry::remote]` macro registers it.
#[derive(Debug)]
pub struct RemoteFunction {
    /// Stable id: `module::path::name`.
    pub id: &'static str,
    /// Decodes the arguments, runs the function and stores its return value
    /// (see `executor::store_return`).
    pub invoke: fn(&[ArgData<'_>]) -> Result<ferry_proto::msg::Return, TaskError>,
}

#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

fn table() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static TABLE: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    TABLE.get_or_init(|| REMOTE_FUNCTIONS.iter().map(|f| (f.id, f)).collect())
}

/// Finds a registered function.
pub fn lookup(id: &str) -> Option<&'static RemoteFunction> {
    table().get(id).copied()
}

/// Decodes argument `index` of function `function` (used by generated code).
pub fn decode_arg<T: DeserializeOwned + 'static>(
    args: &[ArgData<'_>],
    index: usize,
    function: &str,
) -> Result<T, TaskError> {
    let bytes = args.get(index).ok_or_else(|| TaskError::BadArgument {
        function: function.to_string(),
        index,
        detail: format!(
            "expected at least {} arguments, got {}",
            index + 1,
            args.len()
        ),
    })?;
    let backing = match bytes.view {
        Some(v) => Backing::Mapped(v),
        None => Backing::None,
    };
    crate::codec::decode_backed(bytes.bytes, backing).map_err(|e| TaskError::BadArgument {
        function: function.to_string(),
        index,
        detail: match e {
            Error::Serialization { detail } => detail,
            e => e.to_string(),
        },
    })
}

/// Checks the argument count (used by generated code).
pub fn check_arity(args: &[ArgData<'_>], n: usize, function: &str) -> Result<(), TaskError> {
    if args.len() != n {
        return Err(TaskError::BadArgument {
            function: function.to_string(),
            index: args.len().min(n),
            detail: format!(
                "{function} takes {n} arguments, the task carried {}",
                args.len()
            ),
        });
    }
    Ok(())
}

/// Runs `f`, turning a panic into a `TaskError` with the panic's message.
pub fn run_catching<R>(function: &str, f: impl FnOnce() -> R) -> Result<R, TaskError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| TaskError::Panicked {
        function: function.to_string(),
        message: panic_message(&*p),
    })
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
