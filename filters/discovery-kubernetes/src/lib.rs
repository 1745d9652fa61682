//! The `kubernetes` discovery adapter: a cluster's endpoints are a Service's EndpointSlices,
//! listed and then watched through the API server, as client-go's reflector does; each
//! endpoint's `ready` condition is its health.
//!
//! ```yaml
//! plugins:
//!   - name: k8s-sd
//!     vm_config: { code: { local: { filename: discovery_kubernetes.wasm } } }
//!     configuration:
//!       cluster: kube-api
//!       token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
//! clusters:
//!   - name: kube-api
//!     endpoints: [{ address: 10.96.0.1:443 }]
//!     tls: { sni: kubernetes.default.svc, trusted_ca: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt }
//!   - name: backend
//!     discovery: { plugin: k8s-sd, namespace: shop, service: web, port: http }
//! ```
//!
//! proxy-wasm's HTTP call hands a module a whole response, never a stream, so each watch asks
//! for a short window (`timeoutSeconds`, `watch_window`) and the next one resumes from the
//! last `resourceVersion`: no event is lost, and each arrives within one window.

mod config;
mod followed;

use std::time::Duration;

use proxy_wasm::types::LogLevel;
use rustng_sdk::discovery::{Answer, Configured, Follower, Protocol, Published, read_file};

use config::Config;
use followed::Followed;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Follower<Kubernetes>>::default());
}}

/// The API server's list and watch, for a [`Follower`] that does the scheduling.
struct Kubernetes {
    /// The bearer token's file; empty for none.
    token_file: String,
}

impl Protocol for Kubernetes {
    type Cluster = Followed;

    const ADAPTER: &'static str = "kubernetes";
    const UPSTREAM: &'static str = "the API server";

    fn configure(bytes: &[u8]) -> Result<Configured<Self>, String> {
        let config = Config::parse(bytes)?;
        Ok(Configured {
            settings: config.follow,
            protocol: Kubernetes {
                token_file: config.token_file,
            },
            clusters: config
                .clusters
                .into_iter()
                .map(|(cluster, service)| (cluster, Followed::new(service)))
                .collect(),
        })
    }

    fn credentials(&self) -> Result<Option<(&'static str, String)>, String> {
        if self.token_file.is_empty() {
            return Ok(None);
        }
        // Read for every request: the kubelet rotates service-account tokens.
        match read_file(&self.token_file) {
            Ok(token) => Ok(Some((
                "authorization",
                format!("Bearer {}", String::from_utf8_lossy(&token).trim()),
            ))),
            Err(status) => Err(format!(
                "cannot read token_file {}: {status:?}",
                self.token_file
            )),
        }
    }

    fn path(followed: &Followed, watch_window: Duration) -> String {
        followed.path(watch_window)
    }

    fn timeout(watch_window: Duration) -> Duration {
        watch_window + Duration::from_secs(10)
    }

    fn answered(followed: &mut Followed, answer: &Answer) -> Result<(), String> {
        followed.answered(answer.status, &answer.body)
    }

    fn published(followed: &Followed) -> Option<Published> {
        let (endpoints, warnings) = followed.set()?;
        Some(Published {
            endpoints,
            detail: format!(
                " (service {}/{})",
                followed.service.namespace, followed.service.name
            ),
            warnings,
        })
    }

    fn failure(reason: &str) -> String {
        format!("{reason}; keeping the last set")
    }
}
