//! Which ABI a module speaks, from the marker function it exports.

use std::fmt;

/// A proxy-wasm ABI version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AbiVersion {
    /// 0.1.0: configuration through `proxy_get_configuration`, per-direction continue calls.
    V0_1_0,
    /// 0.2.0: buffers and `proxy_continue_stream`.
    V0_2_0,
    /// 0.2.1: the current one.
    V0_2_1,
}

impl AbiVersion {
    /// Every version, oldest first.
    pub const ALL: [AbiVersion; 3] = [AbiVersion::V0_1_0, AbiVersion::V0_2_0, AbiVersion::V0_2_1];

    /// The export a module of this version carries (never called; a marker).
    pub fn marker(self) -> &'static str {
        match self {
            AbiVersion::V0_1_0 => "proxy_abi_version_0_1_0",
            AbiVersion::V0_2_0 => "proxy_abi_version_0_2_0",
            AbiVersion::V0_2_1 => "proxy_abi_version_0_2_1",
        }
    }

    /// Detects the version from a module's export names.
    pub fn detect<'a>(
        exports: impl IntoIterator<Item = &'a str>,
    ) -> Result<AbiVersion, VersionError> {
        let mut found: Option<AbiVersion> = None;
        for name in exports {
            let Some(version) = AbiVersion::ALL.into_iter().find(|v| v.marker() == name) else {
                if name.starts_with("proxy_abi_version_") {
                    return Err(VersionError::Unsupported(name.to_owned()));
                }
                continue;
            };
            match found {
                Some(first) if first != version => {
                    return Err(VersionError::Ambiguous(first, version));
                }
                _ => found = Some(version),
            }
        }
        found.ok_or(VersionError::Missing)
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbiVersion::V0_1_0 => "0.1.0",
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        })
    }
}

/// Why a module's ABI version could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// No `proxy_abi_version_*` export: not a proxy-wasm module.
    #[error("no proxy_abi_version_* export: not a proxy-wasm module")]
    Missing,
    /// A marker for a version RustNg does not speak.
    #[error("unsupported proxy-wasm ABI marker {0}")]
    Unsupported(String),
    /// Markers for two versions.
    #[error("module claims two ABI versions, {0} and {1}")]
    Ambiguous(AbiVersion, AbiVersion),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_version_and_refuses_the_rest() {
        for v in AbiVersion::ALL {
            let exports = [
                "memory",
                "_initialize",
                v.marker(),
                "proxy_on_context_create",
            ];
            assert_eq!(AbiVersion::detect(exports), Ok(v));
        }
        assert_eq!(
            AbiVersion::detect(["memory", "_start"]),
            Err(VersionError::Missing)
        );
        assert_eq!(
            AbiVersion::detect(["proxy_abi_version_0_3_0"]),
            Err(VersionError::Unsupported("proxy_abi_version_0_3_0".into()))
        );
        assert_eq!(
            AbiVersion::detect(["proxy_abi_version_0_1_0", "proxy_abi_version_0_2_1"]),
            Err(VersionError::Ambiguous(
                AbiVersion::V0_1_0,
                AbiVersion::V0_2_1
            ))
        );
        assert_eq!(AbiVersion::V0_2_1.to_string(), "0.2.1");
    }
}
