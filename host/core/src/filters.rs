//! The HTTP filter chain: the proxy-wasm plugins a listener runs on every request.
//!
//! Modules are compiled once per process ([`LoadedPlugin`]); each worker runs its own instance
//! of each ([`Filter`]), so a request's filter calls never cross threads or take a lock. The
//! failure policy is applied here and nowhere else: a plugin that traps, overruns its deadline
//! or its memory is marked failed, and `FAIL_CLOSED` answers 503, `FAIL_OPEN` skips it,
//! `FAIL_RELOAD` answers 503 and starts a fresh instance for the next request.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use rustng_runtime_config::{FailurePolicy, Plugin};
use rustng_wasm::{
    HeadersOutcome, HttpContextId, InstanceEnv, Limits, PluginConfig, PluginHost, PluginInstance,
    PluginModule, QueueNotifier, QueueReady, RequestHead, ResponseHead, StreamInfo, WasmEngine,
    WasmError,
};
use tokio::sync::{Notify, mpsc};

/// A plugin's module, compiled and checked once per process.
pub(crate) struct LoadedPlugin {
    name: String,
    config: Arc<PluginConfig>,
    module: PluginModule,
    policy: FailurePolicy,
    host: Arc<PluginHost>,
}

impl LoadedPlugin {
    /// Reads, compiles and test-starts the plugin: a module that does not load or refuses its
    /// configuration is reported now, with the reason, not on the first request.
    pub(crate) fn load(
        engine: &WasmEngine,
        host: &Arc<PluginHost>,
        plugin: &Plugin,
    ) -> Result<LoadedPlugin, String> {
        let bytes = std::fs::read(&plugin.module)
            .map_err(|e| format!("cannot read {}: {e}", plugin.module.display()))?;
        let module = PluginModule::compile(engine, &bytes).map_err(|e| e.to_string())?;
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
            config,
            module,
            policy: plugin.failure_policy,
            host: Arc::clone(host),
        };
        // The trial instance gets no queue notifier: it is dropped right away.
        loaded.instantiate(None).map_err(|e| e.to_string())?;
        Ok(loaded)
    }

    fn instantiate(&self, queue_ready: Option<QueueNotifier>) -> Result<PluginInstance, WasmError> {
        PluginInstance::start(
            &self.module,
            Arc::clone(&self.config),
            Limits::default(),
            InstanceEnv {
                host: Arc::clone(&self.host),
                log: None,
                queue_ready,
            },
        )
    }
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
}

impl Filter {
    /// Starts this worker's instance and the task that delivers its root-context events
    /// (ticks, queue messages). Must run inside the worker's `LocalSet`.
    pub(crate) fn start(plugin: Arc<LoadedPlugin>) -> Rc<Filter> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue_ready: QueueNotifier = Arc::new(move |ready| {
            // The receiving worker may be gone at shutdown; nothing to tell then.
            let _ = sender.send(ready);
        });
        let instance = match plugin.instantiate(Some(Arc::clone(&queue_ready))) {
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
        });
        tokio::task::spawn_local(root_events(Rc::clone(&filter), receiver));
        filter
    }

    /// Notes a tick period a callback may have changed.
    fn after_callback(&self, instance: &PluginInstance) {
        let period = instance.tick_period();
        if period != self.tick_period.get() {
            self.tick_period.set(period);
            self.tick_changed.notify_one();
        }
    }

    /// Runs a root-context callback, applying the failure policy if it fails.
    fn root_call(&self, call: impl FnOnce(&mut PluginInstance) -> Result<(), WasmError>) {
        if !self.ready() {
            return;
        }
        let result = {
            let mut slot = self.instance.borrow_mut();
            let Some(instance) = slot.as_mut() else {
                return;
            };
            let result = call(instance);
            self.after_callback(instance);
            result
        };
        if let Err(error) = result {
            self.fail(&error);
        }
    }

    /// The instance to use, restarting it first under `FAIL_RELOAD`.
    fn ready(&self) -> bool {
        let mut instance = self.instance.borrow_mut();
        if instance.is_none() && self.plugin.policy == FailurePolicy::FailReload {
            match self.plugin.instantiate(Some(Arc::clone(&self.queue_ready))) {
                Ok(fresh) => {
                    tracing::info!(plugin = %self.plugin.name, "plugin instance reloaded");
                    self.after_callback(&fresh);
                    *instance = Some(fresh);
                }
                Err(error) => {
                    tracing::error!(plugin = %self.plugin.name, %error, "plugin reload failed");
                }
            }
        }
        instance.is_some()
    }

    /// Marks the instance failed and says whether the request may go on without it.
    fn fail(&self, error: &WasmError) -> bool {
        tracing::error!(plugin = %self.plugin.name, %error, policy = ?self.plugin.policy, "plugin failed");
        *self.instance.borrow_mut() = None;
        self.plugin.policy == FailurePolicy::FailOpen
    }
}

/// Delivers ticks and queue messages to a worker's plugin instance for as long as the worker
/// runs (the task ends with the worker's `LocalSet`). Ticks follow the period the plugin last
/// set; none while it is unset.
async fn root_events(current: Rc<Filter>, mut queue: mpsc::UnboundedReceiver<QueueReady>) {
    let mut next_tick = None;
    loop {
        let period = current.tick_period.get();
        let deadline = match (period, next_tick) {
            (None, _) => None,
            (Some(_), Some(at)) => Some(at),
            (Some(period), None) => Some(tokio::time::Instant::now() + period),
        };
        next_tick = deadline;
        enum Event {
            Tick,
            Queue(QueueReady),
            PeriodChanged,
            Closed,
        }
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
pub(crate) struct LocalAnswer {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(String, HeaderValue)>,
    pub(crate) body: Vec<u8>,
    /// For the access log's `response_flags`.
    pub(crate) reason: &'static str,
}

impl LocalAnswer {
    fn plugin_failed() -> LocalAnswer {
        LocalAnswer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: Vec::new(),
            body: b"plugin failed\n".to_vec(),
            reason: "plugin failed",
        }
    }

    fn from_plugin(local: rustng_wasm::LocalResponse) -> LocalAnswer {
        LocalAnswer {
            status: local.status,
            headers: local.headers,
            body: local.body,
            reason: "local response from plugin",
        }
    }
}

/// The filters of a listener on one worker, in config order.
#[derive(Default)]
pub(crate) struct FilterChain {
    filters: Vec<Rc<Filter>>,
}

/// The stream contexts a request opened; ends them (done, log, delete) when dropped.
pub(crate) struct ActiveFilters {
    contexts: Vec<(Rc<Filter>, HttpContextId)>,
    /// The stream's addresses and the properties its filters set, seen by all of them.
    stream: StreamInfo,
}

impl FilterChain {
    pub(crate) fn new(filters: Vec<Rc<Filter>>) -> FilterChain {
        FilterChain { filters }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the request head through every filter. The contexts opened so far come back
    /// either way, so they are ended with the exchange.
    pub(crate) fn on_request(
        &self,
        head: &mut RequestHead,
        stream: StreamInfo,
        end_of_stream: bool,
    ) -> (ActiveFilters, Option<LocalAnswer>) {
        let mut active = ActiveFilters {
            contexts: Vec::with_capacity(self.filters.len()),
            stream,
        };
        for filter in &self.filters {
            if !filter.ready() {
                if filter.plugin.policy == FailurePolicy::FailOpen {
                    continue;
                }
                return (active, Some(LocalAnswer::plugin_failed()));
            }
            let outcome = {
                let mut slot = filter.instance.borrow_mut();
                let Some(instance) = slot.as_mut() else {
                    continue;
                };
                let outcome = instance.create_http_context().and_then(|context| {
                    active.contexts.push((Rc::clone(filter), context));
                    instance.on_request_headers(context, head, &mut active.stream, end_of_stream)
                });
                filter.after_callback(instance);
                outcome
            };
            match outcome {
                Ok(HeadersOutcome::Continue) => {}
                Ok(HeadersOutcome::LocalResponse(local)) => {
                    return (active, Some(LocalAnswer::from_plugin(local)));
                }
                Ok(HeadersOutcome::Pause) => {
                    // Resuming a paused stream arrives with callouts; until then a pause
                    // without an answer cannot complete, so say so instead of hanging.
                    tracing::warn!(plugin = %filter.plugin.name, "plugin paused the request; resuming is not supported yet");
                    return (
                        active,
                        Some(LocalAnswer {
                            status: StatusCode::SERVICE_UNAVAILABLE,
                            headers: Vec::new(),
                            body: b"plugin paused the request\n".to_vec(),
                            reason: "plugin paused",
                        }),
                    );
                }
                Err(error) => {
                    // The context died with the instance: nothing to end.
                    active.contexts.retain(|(f, _)| !Rc::ptr_eq(f, filter));
                    if !filter.fail(&error) {
                        return (active, Some(LocalAnswer::plugin_failed()));
                    }
                }
            }
        }
        (active, None)
    }
}

impl ActiveFilters {
    /// Runs the response head through the filters, last to first (Envoy's order).
    pub(crate) fn on_response(
        &mut self,
        head: &mut ResponseHead,
        end_of_stream: bool,
    ) -> Option<LocalAnswer> {
        let mut failed = Vec::new();
        let mut answer = None;
        for (index, (filter, context)) in self.contexts.iter().enumerate().rev() {
            let outcome = {
                let mut slot = filter.instance.borrow_mut();
                let Some(instance) = slot.as_mut() else {
                    continue;
                };
                let outcome =
                    instance.on_response_headers(*context, head, &mut self.stream, end_of_stream);
                filter.after_callback(instance);
                outcome
            };
            match outcome {
                Ok(HeadersOutcome::Continue) | Ok(HeadersOutcome::Pause) => {}
                Ok(HeadersOutcome::LocalResponse(local)) => {
                    answer = Some(LocalAnswer::from_plugin(local));
                    break;
                }
                Err(error) => {
                    failed.push(index);
                    if !filter.fail(&error) {
                        answer = Some(LocalAnswer::plugin_failed());
                        break;
                    }
                }
            }
        }
        for index in failed {
            self.contexts.remove(index);
        }
        answer
    }
}

impl Drop for ActiveFilters {
    fn drop(&mut self) {
        for (filter, context) in self.contexts.drain(..) {
            let finished = {
                let mut slot = filter.instance.borrow_mut();
                match slot.as_mut() {
                    Some(instance) => instance.finish_http_context(context, None, None),
                    None => Ok(()),
                }
            };
            if let Err(error) = finished {
                filter.fail(&error);
            }
        }
    }
}
