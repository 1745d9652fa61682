//! Errors that say where they came from and whether a retry can help, so that status codes,
//! retries and logs read fields instead of parsing messages.

use std::fmt;
use std::net::SocketAddr;

use http::StatusCode;

/// Which side of the proxy an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client.
    Downstream,
    /// An upstream endpoint.
    Upstream,
    /// RustNg itself (config, routing).
    Internal,
}

/// What went wrong while proxying one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request cannot be forwarded as it is (such as a `Host` that is no authority).
    InvalidRequest,
    /// No cluster was chosen for the request.
    NoRoute,
    /// A filter routed the request to a cluster the config does not have.
    ClusterNotFound,
    /// The chosen cluster has no endpoints.
    NoHealthyUpstream,
    /// The TCP connect to an endpoint failed.
    ConnectRefused,
    /// The TCP connect did not finish within `connect_timeout`.
    ConnectTimeout,
    /// The response head did not arrive within the cluster `timeout`.
    UpstreamTimeout,
    /// The upstream closed, reset or spoke invalid HTTP before the response head.
    UpstreamProtocol,
    /// A circuit breaker of the cluster is open (too much in flight).
    Overflow,
}

impl ErrorKind {
    /// The status the client sees.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NoHealthyUpstream | ErrorKind::ClusterNotFound | ErrorKind::Overflow => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::ConnectRefused | ErrorKind::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Short text for the local response body and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::NoRoute => "no route",
            ErrorKind::NoHealthyUpstream => "no healthy upstream",
            ErrorKind::ClusterNotFound => "cluster not found",
            ErrorKind::ConnectRefused => "upstream connect error",
            ErrorKind::ConnectTimeout => "upstream connect timeout",
            ErrorKind::UpstreamTimeout => "upstream request timeout",
            ErrorKind::UpstreamProtocol => "upstream reset before response headers",
            ErrorKind::Overflow => "upstream overflow",
        }
    }

    pub(crate) fn into_error(self) -> ProxyError {
        ProxyError::new(self)
    }

    fn source(self) -> ErrorSource {
        match self {
            ErrorKind::InvalidRequest => ErrorSource::Downstream,
            ErrorKind::NoRoute | ErrorKind::NoHealthyUpstream | ErrorKind::ClusterNotFound => {
                ErrorSource::Internal
            }
            _ => ErrorSource::Upstream,
        }
    }
}

/// An error while proxying one request.
#[derive(Debug)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Where it came from.
    pub source: ErrorSource,
    /// Whether trying another endpoint may succeed: true only when nothing of the request
    /// reached the upstream.
    pub retryable: bool,
    /// The endpoint involved, if any.
    pub endpoint: Option<SocketAddr>,
    /// The underlying cause.
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        ProxyError {
            kind,
            source: kind.source(),
            retryable: false,
            endpoint: None,
            cause: None,
        }
    }

    pub(crate) fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    pub(crate) fn at(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    pub(crate) fn because(
        mut self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.cause = Some(cause.into());
        self
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(endpoint) = self.endpoint {
            write!(f, " ({endpoint})")?;
        }
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {}

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A listening socket could not be set up.
    #[error("listener {listener}: cannot listen on {address}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        address: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("listener {listener}: {message}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What is wrong.
        message: String,
    },
    /// A plugin could not be loaded.
    #[error("plugin {plugin}: {message}")]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The config could not be prepared (plugins, TLS material, sockets): every problem with
    /// the path of its field.
    #[error("{}", rustng_runtime_config::render_errors(.0))]
    Refused(Vec<rustng_runtime_config::FieldError>),
    /// The state directory could not be opened.
    #[error("state_dir {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A worker thread or runtime could not be started.
    #[error("worker {index}: {source}")]
    Worker {
        /// Worker index.
        index: usize,
        /// Cause.
        source: std::io::Error,
    },
}
