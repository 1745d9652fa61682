//! `rustng.read_file`: a discovery adapter reads a file its own configuration names (a
//! Kubernetes service-account token, which the kubelet rotates, so it is read each time it is
//! needed). A module has no filesystem; this gives an adapter exactly the files the operator
//! wrote into its configuration, and nothing else.
//!
//! Only on the discovery thread: adapters run there, and [`allow`] records, per adapter, the
//! strings of its configuration. Anywhere else the function says `UNIMPLEMENTED`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::sync::Arc;

use rustng_abi::Status;
use rustng_abi::extensions::MAX_READ_FILE_BYTES;

thread_local! {
    /// Adapter name → the strings in its configuration (the only paths it may read).
    static ALLOWED: RefCell<Option<HashMap<String, HashSet<String>>>> = const { RefCell::new(None) };
}

/// Lets `plugin` (on this thread) read the files its `configuration` (JSON) names.
pub(crate) fn allow(plugin: &str, configuration: &[u8]) {
    let mut strings = HashSet::new();
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(configuration) {
        collect_strings(&json, &mut strings);
    }
    ALLOWED.with(|allowed| {
        allowed
            .borrow_mut()
            .get_or_insert_with(HashMap::new)
            .insert(plugin.to_owned(), strings);
    });
}

/// Forgets an adapter that left.
pub(crate) fn forget(plugin: &str) {
    ALLOWED.with(|allowed| {
        if let Some(map) = allowed.borrow_mut().as_mut() {
            map.remove(plugin);
        }
    });
}

fn collect_strings(value: &serde_json::Value, into: &mut HashSet<String>) {
    match value {
        serde_json::Value::String(s) => {
            into.insert(s.clone());
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, into)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| collect_strings(v, into)),
        _ => {}
    }
}

/// The `rustng.read_file` foreign function: the argument is the path; the result, the file.
pub(crate) fn read_file_function() -> rustng_wasm::ForeignFunction {
    Arc::new(|plugin: &str, argument: &[u8]| {
        let path = std::str::from_utf8(argument).map_err(|_| Status::BadArgument)?;
        let allowed = ALLOWED.with(|allowed| {
            allowed
                .borrow()
                .as_ref()
                .map(|map| map.get(plugin).is_some_and(|paths| paths.contains(path)))
        });
        match allowed {
            None => return Err(Status::Unimplemented),
            Some(false) => {
                tracing::warn!(
                    plugin,
                    path,
                    "rustng.read_file: refused, the path is not in the adapter's configuration"
                );
                return Err(Status::BadArgument);
            }
            Some(true) => {}
        }
        let file = std::fs::File::open(path).map_err(|error| {
            tracing::warn!(plugin, path, %error, "rustng.read_file: cannot read");
            Status::NotFound
        })?;
        let mut bytes = Vec::new();
        // One byte past the limit tells a file that is too large from one that just fits.
        file.take(MAX_READ_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| {
                tracing::warn!(plugin, path, %error, "rustng.read_file: cannot read");
                Status::NotFound
            })?;
        if bytes.len() > MAX_READ_FILE_BYTES {
            tracing::warn!(
                plugin,
                path,
                "rustng.read_file: larger than {MAX_READ_FILE_BYTES} bytes"
            );
            return Err(Status::BadArgument);
        }
        Ok(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_reads_only_the_files_its_configuration_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "secret").expect("write");
        let token = token.to_str().expect("utf-8").to_owned();
        let read = read_file_function();
        assert_eq!(
            read("k8s", token.as_bytes()),
            Err(Status::Unimplemented),
            "not enabled on this thread"
        );
        allow(
            "k8s",
            serde_json::json!({"settings": {"token_file": token}, "clusters": {}})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(read("k8s", token.as_bytes()), Ok(b"secret".to_vec()));
        assert_eq!(read("k8s", b"/etc/passwd"), Err(Status::BadArgument));
        assert_eq!(read("other", token.as_bytes()), Err(Status::BadArgument));
        forget("k8s");
        assert_eq!(read("k8s", token.as_bytes()), Err(Status::BadArgument));
    }
}
