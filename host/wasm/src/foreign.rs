//! Foreign functions: named host functions a plugin calls with
//! `proxy_call_foreign_function(name, argument)`. Envoy uses them for extras (compression,
//! filter state); RustNg's extension points (publishing endpoints, resolving names) are
//! foreign functions too, registered by the embedding host before plugins load.

use std::collections::HashMap;
use std::sync::Arc;

use rustng_abi::Status;

/// A host function: gets the calling plugin's name and the argument bytes, returns the
/// result bytes or a status (`BAD_ARGUMENT` for an argument it cannot use, say).
pub type ForeignFunction = Arc<dyn Fn(&str, &[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

/// The foreign functions of a process, by name.
#[derive(Clone, Default)]
pub struct ForeignFunctions {
    functions: HashMap<String, ForeignFunction>,
}

impl ForeignFunctions {
    /// Adds (or replaces) `name`.
    pub fn register(&mut self, name: impl Into<String>, function: ForeignFunction) {
        self.functions.insert(name.into(), function);
    }

    /// Calls `name`; an unknown name is `NOT_FOUND`, as in Envoy.
    pub(crate) fn call(
        &self,
        name: &str,
        plugin: &str,
        argument: &[u8],
    ) -> Result<Vec<u8>, Status> {
        let function = self.functions.get(name).ok_or(Status::NotFound)?;
        function(plugin, argument)
    }
}
