//! Runs hyper's background tasks on the current worker thread.
//!
//! Workers are current-thread runtimes with a `LocalSet`, so connection tasks can hold `Rc`
//! state and never need `Send`; hyper's HTTP/2 stream tasks go through this executor.

use std::future::Future;

/// A hyper executor that spawns onto the worker's `LocalSet`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
