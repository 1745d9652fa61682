//! Runs hyper's background tasks on the current worker thread, and starts the other threads
//! that work the same way.
//!
//! Workers are current-thread runtimes with a `LocalSet`, so connection tasks can hold `Rc`
//! state and never need `Send`; hyper's HTTP/2 stream tasks go through this executor.

use std::future::Future;

/// A hyper executor that spawns onto the worker's `LocalSet`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LocalExec;

/// Starts a thread named `name` that runs the future `make` returns on a current-thread
/// runtime with a `LocalSet`, as a worker does, until it ends.
pub(crate) fn spawn_thread<F, Fut>(name: &str, make: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            tokio::task::LocalSet::new().block_on(&runtime, make());
        })?;
    Ok(())
}

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
