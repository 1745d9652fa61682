use std::fmt;
use std::path::PathBuf;

/// One problem in a config document, tied to the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, as `clusters[0].endpoints[1].address`; empty for the document itself.
    pub path: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl FieldError {
    /// A problem with the field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not YAML of the expected shape (syntax, unknown field, wrong type).
    /// Shape errors stop the parser, so there is only one.
    #[error("{0}")]
    Schema(FieldError),
    /// The document has the right shape but its values do not make sense; every problem found.
    #[error("{}", render_errors(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every field error, in document order; empty for [`ConfigError::Read`].
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Schema(e) => std::slice::from_ref(e),
            ConfigError::Invalid(errors) => errors,
        }
    }
}

/// Field errors one per line, as `path: message`.
pub fn render_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
