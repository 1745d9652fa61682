//! Keep-alive connections to one endpoint, owned by one worker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

/// An idle HTTP/1.1 connection and when it became idle.
struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

/// The idle HTTP/1.1 connections and the shared HTTP/2 connection of one endpoint.
pub(crate) struct EndpointPool {
    idle: RefCell<VecDeque<Idle>>,
    h2: RefCell<Option<http2::SendRequest<Incoming>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl EndpointPool {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        EndpointPool {
            idle: RefCell::new(VecDeque::new()),
            h2: RefCell::new(None),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used live connection: warm in the upstream's caches and least likely
    /// to have hit the upstream's own keep-alive timeout.
    pub(crate) async fn checkout_http1(&self) -> Option<http1::SendRequest<Incoming>> {
        loop {
            let entry = self.idle.borrow_mut().pop_back()?;
            if entry.sender.is_closed() || entry.since.elapsed() >= self.idle_timeout {
                continue;
            }
            let mut sender = entry.sender;
            // A connection comes back as soon as its response body ends; its driver may not
            // have run since, so wait for it to say it can take the next request.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin_http1(&self, sender: http1::SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= self.max_idle {
            // Over the cap: close the oldest, keep the warm one.
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// The shared HTTP/2 connection, if one is open.
    pub(crate) fn http2(&self) -> Option<http2::SendRequest<Incoming>> {
        let mut h2 = self.h2.borrow_mut();
        match &*h2 {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    pub(crate) fn set_http2(&self, sender: http2::SendRequest<Incoming>) {
        *self.h2.borrow_mut() = Some(sender);
    }

    /// Drops idle connections that are closed or past `idle_timeout`.
    pub(crate) fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.idle
            .borrow_mut()
            .retain(|e| !e.sender.is_closed() && e.since.elapsed() < timeout);
        self.http2();
    }
}
