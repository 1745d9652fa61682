//! Watching where traffic goes: which origins (by the name the test origin answers with)
//! serve a URL, and waiting until that is exactly an expected set. The discovery tests use
//! it to measure how long a registry change takes to reach traffic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::client;

/// Which origins answer `count` requests to `url`, and how often (a failure counts under
/// `status <code>`).
pub(crate) async fn spread(url: &str, count: usize) -> HashMap<String, usize> {
    let client = client::http1();
    let mut seen = HashMap::new();
    for _ in 0..count {
        let reply = client::get(&client, url).await;
        let origin = if reply.status == 200 {
            reply.json()["origin"].as_str().unwrap_or("?").to_owned()
        } else {
            format!("status {}", reply.status)
        };
        *seen.entry(origin).or_insert(0) += 1;
    }
    seen
}

/// Waits until 20 requests in a row are answered by exactly the origins `expected` (sorted
/// names); how long that took, or `None` past `bound`.
pub(crate) async fn converges(url: &str, expected: &[&str], bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < bound {
        let seen = spread(url, 20).await;
        let mut names: Vec<&str> = seen.keys().map(String::as_str).collect();
        names.sort_unstable();
        if names == expected {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
