//! The HTTP filter chain: the proxy-wasm plugins a listener runs on every request.
//!
//! Modules are compiled once per process ([`LoadedPlugin`]); each worker runs its own instance
//! of each ([`Filter`]), so a request's filter calls never cross threads or take a lock. The
//! failure policy is applied here and nowhere else: a plugin that traps, overruns its deadline
//! or its memory is marked failed, and `FAIL_CLOSED` answers 503, `FAIL_OPEN` skips it,
//! `FAIL_RELOAD` answers 503 and starts a fresh instance for the next request.
//!
//! What a plugin asks for outside its own callback's return value (HTTP calls, resuming or
//! answering a paused stream) is collected from the instance after every callback and
//! dispatched here: calls run as tasks on the worker ([`callout`]), stream actions go to the
//! stream waiting for them ([`pause`]).

mod body;
mod callout;
mod chain;
mod grpc;
mod pause;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use rustng_runtime_config::{FailurePolicy, Plugin};
use rustng_wasm::{
    GrpcAction, GrpcEvent, HttpCallRequest, HttpCallResponse, InstanceEnv, InstanceUsage, Limits,
    PluginConfig, PluginHost, PluginInstance, PluginModule, PluginUsage, QueueNotifier, QueueReady,
    StreamAction, UpstreamCheck, UsageTotals, WasmEngine, WasmError,
};
use tokio::sync::{Notify, mpsc};

use crate::upstream::ClusterTable;

pub(crate) use body::FilteredBody;
pub(crate) use chain::{FilterChain, SharedFilters, Step};
pub(crate) use pause::{Held, Resumed, wait_for_resume};

/// The worker's clusters by name, for plugins' HTTP calls.
pub(crate) type Clusters = Rc<ClusterTable>;

/// One generation of a plugin (its module and configuration), compiled and checked once per
/// process. Workers run their own instances of it; a new generation replaces it between
/// requests, and it is dropped once no worker and no stream uses it.
pub(crate) struct LoadedPlugin {
    name: String,
    /// Counts up from 1 per plugin name, for the life of the process.
    generation: u64,
    /// What this generation was made from: the configured plugin and its module's sha256.
    /// An unchanged pair in a new config version keeps this generation and its instances.
    spec: Plugin,
    digest: [u8; 32],
    config: Arc<PluginConfig>,
    module: PluginModule,
    policy: FailurePolicy,
    limits: Limits,
    host: Arc<PluginHost>,
    upstreams: UpstreamCheck,
    /// Callbacks that failed (trap, deadline, memory), on every worker and in every
    /// generation of the plugin: the policy's count.
    failures: Arc<AtomicU64>,
    /// Callbacks, guest time and memory of every instance of the plugin (all generations).
    usage: Arc<PluginUsage>,
}

/// Where a new generation comes from.
pub(crate) struct PluginSource<'a> {
    pub(crate) plugin: &'a Plugin,
    pub(crate) bytes: &'a [u8],
    pub(crate) digest: [u8; 32],
    pub(crate) generation: u64,
    /// The failure count of the plugin's earlier generations, carried on.
    pub(crate) failures: Arc<AtomicU64>,
    /// The usage record of the plugin's earlier generations, carried on.
    pub(crate) usage: Arc<PluginUsage>,
}

impl LoadedPlugin {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A discovery adapter: it runs on the discovery thread, once per process, and no
    /// worker starts it.
    pub(crate) fn is_singleton(&self) -> bool {
        self.spec.singleton
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn spec(&self) -> &Plugin {
        &self.spec
    }

    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// How many times a callback of this plugin failed, since start.
    /// The counters shared by all generations of the plugin.
    pub(crate) fn counters(&self) -> (Arc<AtomicU64>, Arc<PluginUsage>) {
        (Arc::clone(&self.failures), Arc::clone(&self.usage))
    }

    /// Callbacks, guest time and memory over the plugin's instances.
    pub(crate) fn usage(&self) -> UsageTotals {
        self.usage.totals()
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Compiles the module and starts a canary instance (`proxy_on_vm_start`, then
    /// `proxy_on_configure`): a module that does not load, traps, overruns its deadline or
    /// refuses its configuration is reported now, with the reason, and never reaches a worker.
    pub(crate) fn load(
        engine: &WasmEngine,
        host: &Arc<PluginHost>,
        upstreams: &UpstreamCheck,
        source: PluginSource<'_>,
    ) -> Result<LoadedPlugin, String> {
        let PluginSource {
            plugin,
            bytes,
            digest,
            generation,
            failures,
            usage,
        } = source;
        let module = PluginModule::compile(engine, bytes).map_err(|e| e.to_string())?;
        let config = Arc::new(PluginConfig {
            name: plugin.name.clone(),
            root_id: plugin.root_id.clone(),
            vm_id: plugin.vm_id.clone(),
            vm_configuration: plugin.vm_configuration.clone(),
            plugin_configuration: plugin.configuration.clone(),
            environment: plugin.environment.clone(),
        });
        let loaded = LoadedPlugin {
            name: plugin.name.clone(),
            generation,
            spec: plugin.clone(),
            digest,
            config,
            module,
            policy: plugin.failure_policy,
            limits: Limits {
                max_memory_bytes: plugin.max_memory_bytes,
                call_deadline: plugin.callback_timeout,
            },
            host: Arc::clone(host),
            upstreams: Arc::clone(upstreams),
            failures,
            usage,
        };
        // The canary gets no queue notifier and reports no usage: it is dropped right away.
        loaded.instantiate(None, None).map_err(|e| e.to_string())?;
        Ok(loaded)
    }

    fn instantiate(
        &self,
        queue_ready: Option<QueueNotifier>,
        usage: Option<Arc<InstanceUsage>>,
    ) -> Result<PluginInstance, WasmError> {
        PluginInstance::start(
            &self.module,
            Arc::clone(&self.config),
            self.limits,
            InstanceEnv {
                host: Arc::clone(&self.host),
                log: None,
                queue_ready,
                upstreams: Some(Arc::clone(&self.upstreams)),
                usage,
            },
        )
    }
}

/// What a plugin asked for during a callback, besides its return value.
struct Asked {
    calls: Vec<HttpCallRequest>,
    actions: Vec<(i32, StreamAction)>,
    grpc: Vec<GrpcAction>,
}

/// Something for a stream that waits on a plugin (see [`pause`]).
pub(crate) enum StreamEvent {
    /// Continue, close or answer, from any callback of the plugin.
    Action(StreamAction),
    /// The answer to an HTTP call the stream's context made; the stream delivers it itself,
    /// so that the plugin can read and change the stream's head meanwhile.
    CallResponse(Box<(HttpCallRequest, Option<HttpCallResponse>)>),
    /// An event of a gRPC call the stream's context made (token and context, event).
    Grpc(Box<((u32, i32), GrpcEvent)>),
}

/// One plugin's instance on one worker; `None` while failed.
pub(crate) struct Filter {
    plugin: Arc<LoadedPlugin>,
    instance: RefCell<Option<PluginInstance>>,
    /// Handed to every instance this filter starts: other workers enqueue through it.
    queue_ready: QueueNotifier,
    /// The tick period last seen, and a nudge for the root task when a callback changes it.
    tick_period: Cell<Option<Duration>>,
    tick_changed: Notify,
    /// Set once a newer generation replaced this one on the worker: its root task stops
    /// (no more ticks or queue deliveries); streams already on it finish.
    retired: Cell<bool>,
    clusters: Clusters,
    /// Streams paused on this plugin, by context id, waiting for actions and call answers.
    waiting: RefCell<HashMap<i32, mpsc::UnboundedSender<StreamEvent>>>,
    /// Contexts with HTTP calls in flight; a context that ends leaves, and its calls' answers
    /// are dropped (Envoy cancels them).
    calling: RefCell<HashMap<i32, usize>>,
    /// gRPC calls and streams in flight, by token.
    grpc: RefCell<HashMap<u32, grpc::GrpcHandle>>,
}

impl Filter {
    /// Starts this worker's instance and the task that delivers its root-context events
    /// (ticks, queue messages). Must run inside the worker's `LocalSet`.
    pub(crate) fn start(plugin: Arc<LoadedPlugin>, clusters: Clusters) -> Rc<Filter> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue_ready: QueueNotifier = Arc::new(move |ready| {
            // The receiving worker may be gone at shutdown; nothing to tell then.
            let _ = sender.send(ready);
        });
        let instance = match plugin.instantiate(
            Some(Arc::clone(&queue_ready)),
            Some(plugin.usage.register()),
        ) {
            Ok(instance) => Some(instance),
            Err(error) => {
                tracing::error!(plugin = %plugin.name, %error, "plugin failed to start on this worker");
                None
            }
        };
        let filter = Rc::new(Filter {
            plugin,
            tick_period: Cell::new(instance.as_ref().and_then(PluginInstance::tick_period)),
            instance: RefCell::new(instance),
            queue_ready,
            tick_changed: Notify::new(),
            retired: Cell::new(false),
            clusters,
            waiting: RefCell::default(),
            calling: RefCell::default(),
            grpc: RefCell::default(),
        });
        // What the start sequence asked for (a call from on_configure, say).
        filter.collect();
        tokio::task::spawn_local(root_events(Rc::clone(&filter), receiver));
        filter
    }

    pub(crate) fn name(&self) -> &str {
        &self.plugin.name
    }

    /// The generation this filter runs.
    pub(crate) fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Whether the worker's instance started (it may fail where the canary did not, if the
    /// engine's pool is full).
    pub(crate) fn is_running(&self) -> bool {
        self.instance.borrow().is_some()
    }

    /// A newer generation took over on this worker: stop root-context events. The instance
    /// itself lives until the last stream on it ends.
    pub(crate) fn retire(&self) {
        self.retired.set(true);
        self.tick_changed.notify_one();
    }

    /// Runs `call` on the instance, if there is one, then dispatches what the plugin asked
    /// for meanwhile. A failure is reported, not applied: the caller decides with
    /// [`Filter::fail`].
    pub(crate) fn with_instance<T>(
        self: &Rc<Self>,
        call: impl FnOnce(&mut PluginInstance) -> Result<T, WasmError>,
    ) -> Option<Result<T, WasmError>> {
        let (result, asked) = {
            let mut slot = self.instance.borrow_mut();
            let instance = slot.as_mut()?;
            let result = call(instance);
            (result, self.after_callback(instance))
        };
        if let Some(asked) = asked {
            self.dispatch(asked);
        }
        Some(result)
    }

    /// Notes a tick period a callback may have changed and takes what the plugin asked for,
    /// if anything (`None` for most callbacks).
    fn after_callback(&self, instance: &mut PluginInstance) -> Option<Asked> {
        let period = instance.tick_period();
        if period != self.tick_period.get() {
            self.tick_period.set(period);
            self.tick_changed.notify_one();
        }
        instance.has_requests().then(|| Asked {
            calls: instance.take_http_calls(),
            actions: instance.take_stream_actions(),
            grpc: instance.take_grpc_actions(),
        })
    }

    /// Collects and dispatches outside any callback (after the start sequence).
    fn collect(self: &Rc<Self>) {
        let taken = {
            let mut slot = self.instance.borrow_mut();
            slot.as_mut()
                .and_then(|instance| self.after_callback(instance))
        };
        if let Some(asked) = taken {
            self.dispatch(asked);
        }
    }

    /// Starts the calls and hands the actions to the streams waiting for them. An action for
    /// a stream that is not waiting (already running again, or gone) has nothing to do.
    fn dispatch(self: &Rc<Self>, asked: Asked) {
        let Asked {
            calls,
            actions,
            grpc,
        } = asked;
        for action in grpc {
            grpc::dispatch(self, action);
        }
        for call in calls {
            *self
                .calling
                .borrow_mut()
                .entry(call.context_id)
                .or_default() += 1;
            tokio::task::spawn_local(callout::run(Rc::clone(self), call));
        }
        for (context, action) in actions {
            let waiting = self.waiting.borrow().get(&context).cloned();
            match waiting {
                Some(stream) => {
                    let _ = stream.send(StreamEvent::Action(action));
                }
                None => {
                    tracing::debug!(plugin = %self.plugin.name, context, ?action, "stream action for a stream that is not paused");
                }
            }
        }
    }

    /// Sends the plugin's actions for `context` (and the answers to its calls) to `events`.
    pub(crate) fn wait_on(&self, context: i32, events: mpsc::UnboundedSender<StreamEvent>) {
        self.waiting.borrow_mut().insert(context, events);
    }

    pub(crate) fn stop_waiting(&self, context: i32) {
        self.waiting.borrow_mut().remove(&context);
    }

    /// A stream context ended: answers to its calls are no longer delivered.
    pub(crate) fn context_ended(&self, context: i32) {
        let mut calling = self.calling.borrow_mut();
        if !calling.is_empty() {
            calling.remove(&context);
        }
    }

    /// The instance to use, restarting it first under `FAIL_RELOAD`.
    pub(crate) fn ready(self: &Rc<Self>) -> bool {
        let restarted = {
            let mut instance = self.instance.borrow_mut();
            if instance.is_none() && self.plugin.policy == FailurePolicy::FailReload {
                match self.plugin.instantiate(
                    Some(Arc::clone(&self.queue_ready)),
                    Some(self.plugin.usage.register()),
                ) {
                    Ok(fresh) => {
                        tracing::info!(plugin = %self.plugin.name, "plugin instance reloaded");
                        *instance = Some(fresh);
                        true
                    }
                    Err(error) => {
                        tracing::error!(plugin = %self.plugin.name, %error, "plugin reload failed");
                        false
                    }
                }
            } else {
                false
            }
        };
        if restarted {
            self.collect();
        }
        self.instance.borrow().is_some()
    }

    /// Whether a failed plugin may be skipped.
    pub(crate) fn fails_open(&self) -> bool {
        self.plugin.policy == FailurePolicy::FailOpen
    }

    /// Marks the instance failed and says whether the request may go on without it.
    pub(crate) fn fail(&self, error: &WasmError) -> bool {
        tracing::error!(plugin = %self.plugin.name, %error, policy = ?self.plugin.policy, "plugin failed");
        self.plugin.failures.fetch_add(1, Ordering::Relaxed);
        *self.instance.borrow_mut() = None;
        // The dead instance's streams will never be resumed by it.
        self.waiting.borrow_mut().clear();
        self.calling.borrow_mut().clear();
        for (_, call) in self.grpc.borrow_mut().drain() {
            call.cancel();
        }
        self.fails_open()
    }

    /// `proxy_on_foreign_function` on the root context: the answer to an asynchronous foreign
    /// call (`rustng.resolve`) the plugin made earlier.
    pub(crate) fn deliver_foreign_answer(self: &Rc<Self>, token: u32, bytes: Vec<u8>) {
        self.root_call(|instance| instance.on_foreign_function(token, bytes));
    }

    /// Runs a root-context callback, applying the failure policy if it fails.
    fn root_call(self: &Rc<Self>, call: impl FnOnce(&mut PluginInstance) -> Result<(), WasmError>) {
        if !self.ready() {
            return;
        }
        if let Some(Err(error)) = self.with_instance(call) {
            self.fail(&error);
        }
    }
}

/// Delivers ticks and queue messages to a worker's plugin instance for as long as the worker
/// runs (the task ends with the worker's `LocalSet`). Ticks follow the period the plugin last
/// set; none while it is unset.
async fn root_events(current: Rc<Filter>, mut queue: mpsc::UnboundedReceiver<QueueReady>) {
    enum Event {
        Tick,
        Queue(QueueReady),
        PeriodChanged,
        Closed,
    }
    let mut next_tick = None;
    loop {
        if current.retired.get() {
            return;
        }
        let deadline = match (current.tick_period.get(), next_tick) {
            (None, _) => None,
            (Some(_), Some(at)) => Some(at),
            (Some(period), None) => Some(tokio::time::Instant::now() + period),
        };
        next_tick = deadline;
        let event = {
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => Event::Tick,
                ready = queue.recv() => ready.map_or(Event::Closed, Event::Queue),
                () = current.tick_changed.notified() => Event::PeriodChanged,
            }
        };
        match event {
            Event::Tick => {
                current.root_call(PluginInstance::on_tick);
                next_tick = current
                    .tick_period
                    .get()
                    .map(|period| tokio::time::Instant::now() + period);
            }
            Event::Queue(ready) => current.root_call(|instance| instance.on_queue_ready(ready)),
            Event::PeriodChanged => next_tick = None,
            Event::Closed => return,
        }
    }
}

/// A response a filter (or a failing filter's policy) gives instead of the upstream's.
#[derive(Debug)]
pub(crate) struct LocalAnswer {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(String, HeaderValue)>,
    pub(crate) body: Vec<u8>,
    /// For the access log's `response_flags`.
    pub(crate) reason: &'static str,
    /// The gRPC status a plugin chose for a gRPC request; else one is derived from `status`.
    pub(crate) grpc_status: Option<u32>,
}

impl LocalAnswer {
    pub(crate) fn plugin_failed() -> LocalAnswer {
        LocalAnswer::text(StatusCode::SERVICE_UNAVAILABLE, "plugin failed")
    }

    pub(crate) fn text(status: StatusCode, reason: &'static str) -> LocalAnswer {
        LocalAnswer {
            status,
            headers: Vec::new(),
            body: format!("{reason}\n").into_bytes(),
            reason,
            grpc_status: None,
        }
    }

    pub(crate) fn from_plugin(local: rustng_wasm::LocalResponse) -> LocalAnswer {
        LocalAnswer {
            status: local.status,
            headers: local.headers,
            body: local.body,
            reason: "local response from plugin",
            grpc_status: local.grpc_status,
        }
    }
}
