//! Keep-alive connections to one endpoint, owned by one worker.

use crate::upstream::RequestBody;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use hyper::client::conn::http2;
use tokio::time::Instant;

use super::h1::H1Connection;

/// An idle HTTP/1.1 connection and when it became idle.
struct Idle {
    conn: H1Connection,
    since: Instant,
}

/// The idle HTTP/1.1 connections and the shared HTTP/2 connection of one endpoint.
pub(crate) struct EndpointPool {
    idle: RefCell<VecDeque<Idle>>,
    h2: RefCell<Option<http2::SendRequest<RequestBody>>>,
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
    /// to have hit the upstream's own keep-alive timeout. Age is left to [`EndpointPool::sweep`]
    /// so that a checkout reads no clock; the most recently used entry is the youngest anyway.
    pub(crate) fn checkout_http1(&self) -> Option<H1Connection> {
        let mut idle = self.idle.borrow_mut();
        while let Some(mut entry) = idle.pop_back() {
            if entry.conn.is_idle_alive() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin_http1(&self, conn: H1Connection, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= self.max_idle {
            // Over the cap: close the oldest, keep the warm one.
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }

    /// The shared HTTP/2 connection, if one is open.
    pub(crate) fn http2(&self) -> Option<http2::SendRequest<RequestBody>> {
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

    pub(crate) fn set_http2(&self, sender: http2::SendRequest<RequestBody>) {
        *self.h2.borrow_mut() = Some(sender);
    }

    /// Drops idle connections that are closed or past `idle_timeout`.
    pub(crate) fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.idle
            .borrow_mut()
            .retain_mut(|e| e.since.elapsed() < timeout && e.conn.is_idle_alive());
        self.http2();
    }
}
