//! The worker's registry of open downstream connections: one timer task closes the idle ones
//! and, on shutdown, drains them all.
//!
//! A timer and a shutdown receiver per connection would be polled on every wake-up of every
//! connection (and tokio's `Notify` behind `watch` takes a mutex on each such poll). Here a
//! connection checks one `Cell` per wake-up; the sweep visits every connection a few times per
//! idle timeout, which costs nothing per request.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::ConnState;

/// Shortest and longest pause between sweeps: a quarter of the smallest idle timeout, within
/// these bounds, closes idle connections at most 25 % late.
const MIN_SWEEP: Duration = Duration::from_millis(10);
const MAX_SWEEP: Duration = Duration::from_secs(1);

/// How a connection is told to close.
#[derive(Debug)]
pub(crate) struct Control {
    state: Rc<ConnState>,
    /// The [`crate::listener::ListenerSlot`] id the connection came in on.
    listener: u64,
    idle_timeout: Duration,
    close: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Control {
    fn request_close(&self) {
        if !self.close.replace(true)
            && let Some(waker) = self.waker.borrow_mut().take()
        {
            waker.wake();
        }
    }
}

/// The open connections of one worker.
#[derive(Debug)]
pub(crate) struct Registry {
    slots: RefCell<Vec<Option<Rc<Control>>>>,
    free: RefCell<Vec<usize>>,
    draining: Cell<bool>,
    /// A quarter of the smallest idle timeout of the worker's listeners (set per config
    /// version), within [`MIN_SWEEP`, `MAX_SWEEP`].
    sweep_every: Cell<Duration>,
}

/// A connection's place in the registry; leaving it (drop) frees the slot.
pub(crate) struct Registration {
    registry: Rc<Registry>,
    slot: usize,
    control: Rc<Control>,
}

impl Registration {
    /// Resolves once the registry asks the connection to close: for connections that watch
    /// for it themselves instead of through [`Watched`] (HTTP/3's GOAWAY is async).
    pub(crate) fn closing(&self) -> Closing<'_> {
        Closing(&self.control)
    }
}

/// See [`Registration::closing`].
pub(crate) struct Closing<'a>(&'a Control);

impl Future for Closing<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let control = self.0;
        if control.close.get() {
            return Poll::Ready(());
        }
        let mut waker = control.waker.borrow_mut();
        match &*waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.slots.borrow_mut()[self.slot] = None;
        self.registry.free.borrow_mut().push(self.slot);
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            slots: RefCell::default(),
            free: RefCell::default(),
            draining: Cell::new(false),
            sweep_every: Cell::new(MAX_SWEEP),
        }
    }
}

impl Registry {
    pub(crate) fn register(
        self: &Rc<Self>,
        state: Rc<ConnState>,
        listener: u64,
        idle_timeout: Duration,
    ) -> Registration {
        let control = Rc::new(Control {
            state,
            listener,
            idle_timeout,
            close: Cell::new(self.draining.get()),
            waker: RefCell::new(None),
        });
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => {
                slots[slot] = Some(Rc::clone(&control));
                slot
            }
            None => {
                slots.push(Some(Rc::clone(&control)));
                slots.len() - 1
            }
        };
        Registration {
            registry: Rc::clone(self),
            slot,
            control,
        }
    }

    /// Open connections.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    /// Asks every connection, present and future, to close gracefully.
    pub(crate) fn drain(&self) {
        self.draining.set(true);
        let controls: Vec<Rc<Control>> = self.slots.borrow().iter().flatten().cloned().collect();
        for control in controls {
            control.request_close();
        }
    }

    /// Asks the connections of one listener (removed, or moved to another address) to close
    /// gracefully.
    pub(crate) fn drain_listener(&self, listener: u64) {
        let controls: Vec<Rc<Control>> = self
            .slots
            .borrow()
            .iter()
            .flatten()
            .filter(|c| c.listener == listener)
            .cloned()
            .collect();
        for control in controls {
            control.request_close();
        }
    }

    /// Sweeps often enough for the smallest idle timeout of the worker's listeners.
    pub(crate) fn set_sweep_period(&self, smallest_idle_timeout: Duration) {
        self.sweep_every
            .set((smallest_idle_timeout / 4).clamp(MIN_SWEEP, MAX_SWEEP));
    }

    /// Closes connections idle past their timeout, until the worker stops.
    pub(crate) async fn sweep_forever(self: Rc<Self>) {
        loop {
            tokio::time::sleep(self.sweep_every.get()).await;
            let now = Instant::now();
            // Collected first: waking may run nothing now, but a slot must not be borrowed
            // while a connection could drop its registration.
            let idle: Vec<Rc<Control>> = self
                .slots
                .borrow()
                .iter()
                .flatten()
                .filter(|c| {
                    c.state
                        .idle_deadline(c.idle_timeout)
                        .is_some_and(|deadline| deadline <= now)
                })
                .cloned()
                .collect();
            for control in idle {
                tracing::debug!("closing idle connection");
                control.request_close();
            }
        }
    }
}

/// Drives a connection future, starting its graceful shutdown once the registry asks.
pub(crate) struct Watched<C> {
    conn: Pin<Box<C>>,
    registration: Registration,
    graceful_shutdown: fn(Pin<&mut C>),
    closing: bool,
}

impl<C: Future> Watched<C> {
    pub(crate) fn new(
        conn: C,
        registration: Registration,
        graceful_shutdown: fn(Pin<&mut C>),
    ) -> Self {
        Watched {
            conn: Box::pin(conn),
            registration,
            graceful_shutdown,
            closing: false,
        }
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        let control = &this.registration.control;
        if !this.closing {
            if control.close.get() {
                this.closing = true;
                (this.graceful_shutdown)(this.conn.as_mut());
            } else {
                let mut waker = control.waker.borrow_mut();
                match &*waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for a hyper connection: ends once asked to shut down gracefully.
    #[derive(Default)]
    struct Conn {
        asked: bool,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.asked {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn watched(registry: &Rc<Registry>, idle: Duration) -> (Watched<Conn>, Rc<ConnState>) {
        let state = Rc::new(ConnState::new());
        let registration = registry.register(Rc::clone(&state), 0, idle);
        let conn = Watched::new(Conn::default(), registration, |c| c.get_mut().asked = true);
        (conn, state)
    }

    #[tokio::test]
    async fn drain_closes_every_connection_and_slots_are_reused() {
        let registry = Rc::new(Registry::default());
        let (a, _) = watched(&registry, Duration::from_secs(60));
        let (b, _) = watched(&registry, Duration::from_secs(60));
        assert_eq!(registry.len(), 2);
        drop(a);
        assert_eq!(registry.len(), 1);
        let (c, _) = watched(&registry, Duration::from_secs(60));
        assert_eq!(registry.slots.borrow().len(), 2, "the freed slot is reused");
        registry.drain();
        tokio::time::timeout(Duration::from_secs(1), async {
            b.await;
            c.await
        })
        .await
        .expect("drained");
        assert_eq!(registry.len(), 0);
        // Connections that arrive while draining start out closing.
        let (late, _) = watched(&registry, Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(1), late)
            .await
            .expect("closed at once");
    }

    #[tokio::test]
    async fn the_sweep_closes_idle_connections_only() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let registry = Rc::new(Registry::default());
                registry.set_sweep_period(Duration::from_millis(40));
                tokio::task::spawn_local(Rc::clone(&registry).sweep_forever());
                let (idle, _) = watched(&registry, Duration::from_millis(40));
                let (busy, busy_state) = watched(&registry, Duration::from_millis(40));
                busy_state.request_started();
                let started = std::time::Instant::now();
                tokio::time::timeout(Duration::from_secs(1), idle)
                    .await
                    .expect("idle one closed");
                assert!(started.elapsed() >= Duration::from_millis(35));
                let busy = tokio::time::timeout(Duration::from_millis(200), busy).await;
                assert!(
                    busy.is_err(),
                    "a connection with a request in flight stays open"
                );
            })
            .await;
    }
}
