//! TCP listeners (`protocol: tcp`): each connection is proxied byte for byte to an endpoint
//! of the listener's cluster, through the listener's network filters (proxy-wasm TCP stream
//! contexts), as Envoy's `tcp_proxy` with `envoy.filters.network.wasm` in front.
//!
//! Data from the client goes through the filters first to last (`proxy_on_downstream_data`),
//! data from the upstream last to first (`proxy_on_upstream_data`); a filter that pauses
//! holds the data, and is called again with everything held when more arrives (or lets it go
//! with `proxy_continue_stream`). A side that
//! closes is half-closed on the other (the filters hear `proxy_on_*_connection_close`), and
//! the contexts end (done, log, delete) when both sides are closed.

use std::net::SocketAddr;
use std::rc::Rc;

use rustng_wasm::{HttpContextId, PeerSide, PeerType, StreamAction};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::filters::{Filter, StreamEvent};
use crate::listener::ListenerRt;

/// Read size per side; a chunk the filters see at most at once (unless they hold data).
const CHUNK: usize = 16 * 1024;
/// Most client data read while a filter holds a new connection; beyond it the client waits.
const HOLD_LIMIT: usize = 1024 * 1024;

/// The network filters' contexts for one connection.
struct Contexts {
    contexts: Vec<(Rc<Filter>, HttpContextId)>,
    /// `proxy_close_stream` from any callback of the connection's filters.
    events: mpsc::UnboundedReceiver<StreamEvent>,
    /// A filter paused in `proxy_on_new_connection`: no upstream connection yet.
    held: bool,
}

impl Contexts {
    fn open(filters: &[Rc<Filter>]) -> Contexts {
        let (sender, events) = mpsc::unbounded_channel();
        let mut contexts = Vec::with_capacity(filters.len());
        let mut held = false;
        for filter in filters {
            if !filter.ready() {
                continue;
            }
            let created = filter.with_instance(|instance| {
                let context = instance.create_http_context()?;
                let go_on = instance.on_new_connection(context)?;
                Ok((context, go_on))
            });
            match created {
                Some(Ok((context, go_on))) => {
                    held |= !go_on;
                    filter.wait_on(context.id(), sender.clone());
                    contexts.push((Rc::clone(filter), context));
                }
                Some(Err(error)) => {
                    filter.fail(&error);
                }
                None => {}
            }
        }
        Contexts {
            contexts,
            events,
            held,
        }
    }

    /// Runs the data callbacks for `side` on `held`; `true` when every filter let it go.
    fn data(&mut self, side: PeerSide, held: &mut Vec<u8>, end_of_stream: bool) -> bool {
        let order: Vec<usize> = match side {
            PeerSide::Downstream => (0..self.contexts.len()).collect(),
            PeerSide::Upstream => (0..self.contexts.len()).rev().collect(),
        };
        for index in order {
            let Some((filter, context)) = self.contexts.get(index).cloned() else {
                continue;
            };
            match filter.with_instance(|i| i.on_tcp_data(side, context, held, end_of_stream)) {
                Some(Ok(true)) | None => {}
                // Held: at the end of the stream there is nothing more to wait for.
                Some(Ok(false)) if !end_of_stream => return false,
                Some(Ok(false)) => {}
                Some(Err(error)) => {
                    // FAIL_OPEN skips the filter from now on; otherwise the connection ends.
                    if !filter.fail(&error) {
                        held.clear();
                        return false;
                    }
                    self.contexts.remove(index);
                }
            }
        }
        true
    }

    fn closed(&self, side: PeerSide, peer: PeerType) {
        for (filter, context) in &self.contexts {
            if let Some(Err(error)) = filter.with_instance(|i| i.on_tcp_close(side, *context, peer))
            {
                filter.fail(&error);
            }
        }
    }
}

impl Drop for Contexts {
    fn drop(&mut self) {
        for (filter, context) in self.contexts.drain(..) {
            filter.stop_waiting(context.id());
            let finished = filter.with_instance(|instance| {
                instance.finish_http_context(context, &mut None, &mut None)
            });
            if let Some(Err(error)) = finished {
                filter.fail(&error);
            }
        }
    }
}

/// Proxies one TCP connection until both sides are closed.
pub(crate) async fn serve(mut client: TcpStream, listener: Rc<ListenerRt>, peer: SocketAddr) {
    let Some(cluster) = listener.default_cluster.clone() else {
        return;
    };
    let mut contexts = Contexts::open(&listener.network_filters);
    let mut from_client = vec![0u8; CHUNK];
    let mut held_up: Vec<u8> = Vec::new();
    if contexts.held
        && !hold_connection(&mut client, &mut contexts, &mut from_client, &mut held_up).await
    {
        return;
    }
    let (upstream_addr, mut upstream) = match cluster.connect_tcp().await {
        Ok(connected) => connected,
        Err(error) => {
            tracing::warn!(listener = &*listener.name, %peer, %error, "TCP upstream connect failed");
            contexts.closed(PeerSide::Upstream, PeerType::Local);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    tracing::debug!(listener = &*listener.name, %peer, upstream = %upstream_addr, "TCP connection proxied");

    // What the client sent while the connection was held goes through the filters first.
    if !held_up.is_empty() && contexts.data(PeerSide::Downstream, &mut held_up, false) {
        if upstream.write_all(&held_up).await.is_err() {
            return;
        }
        held_up.clear();
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let mut from_upstream = vec![0u8; CHUNK];
    let mut held_down: Vec<u8> = Vec::new();
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        tokio::select! {
            read = client_read.read(&mut from_client), if client_open => {
                let n = read.unwrap_or(0);
                held_up.extend_from_slice(&from_client[..n]);
                let end = n == 0;
                if contexts.data(PeerSide::Downstream, &mut held_up, end) && !held_up.is_empty() {
                    if upstream_write.write_all(&held_up).await.is_err() {
                        break;
                    }
                    held_up.clear();
                }
                if end {
                    client_open = false;
                    let _ = upstream_write.shutdown().await;
                    contexts.closed(PeerSide::Downstream, PeerType::Remote);
                }
            }
            read = upstream_read.read(&mut from_upstream), if upstream_open => {
                let n = read.unwrap_or(0);
                held_down.extend_from_slice(&from_upstream[..n]);
                let end = n == 0;
                if contexts.data(PeerSide::Upstream, &mut held_down, end) && !held_down.is_empty() {
                    if client_write.write_all(&held_down).await.is_err() {
                        break;
                    }
                    held_down.clear();
                }
                if end {
                    upstream_open = false;
                    let _ = client_write.shutdown().await;
                    contexts.closed(PeerSide::Upstream, PeerType::Remote);
                }
            }
            Some(event) = contexts.events.recv() => match event {
                StreamEvent::Action(StreamAction::Close) => {
                    tracing::debug!(listener = &*listener.name, %peer, "TCP connection closed by a filter");
                    break;
                }
                // A filter lets what it held go on, as it is now.
                StreamEvent::Action(StreamAction::ContinueDownstream) if !held_up.is_empty() => {
                    if upstream_write.write_all(&held_up).await.is_err() {
                        break;
                    }
                    held_up.clear();
                }
                StreamEvent::Action(StreamAction::ContinueUpstream) if !held_down.is_empty() => {
                    if client_write.write_all(&held_down).await.is_err() {
                        break;
                    }
                    held_down.clear();
                }
                _ => {}
            }
        }
    }
}

/// A filter paused the new connection: no upstream until a filter resumes it with
/// `proxy_continue_stream`, as Envoy holds it. The client is still read (up to `HOLD_LIMIT`),
/// so that a client leaving meanwhile ends the connection; what it sent waits in `held_up` and
/// goes through the filters once resumed. `false`: the connection ended instead.
async fn hold_connection(
    client: &mut TcpStream,
    contexts: &mut Contexts,
    buf: &mut [u8],
    held_up: &mut Vec<u8>,
) -> bool {
    loop {
        tokio::select! {
            read = client.read(buf), if held_up.len() < HOLD_LIMIT => {
                let n = read.unwrap_or(0);
                if n == 0 {
                    contexts.closed(PeerSide::Downstream, PeerType::Remote);
                    return false;
                }
                held_up.extend_from_slice(&buf[..n]);
            }
            event = contexts.events.recv() => match event {
                Some(StreamEvent::Action(StreamAction::ContinueDownstream)) => return true,
                Some(StreamEvent::Action(StreamAction::Close)) | None => return false,
                Some(_) => {}
            }
        }
    }
}
