//! One running copy of a plugin: its store, its root context, and the start sequence Envoy
//! runs (`_initialize`/`_start`, then `proxy_on_context_create`, `proxy_on_vm_start`,
//! `proxy_on_configure`), each call under the deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use rustng_abi::{Action, BufferType, LogLevel, MapType, PeerType};
use wasmtime::{
    Caller, Extern, Func, Global, Instance, PoolConcurrencyLimitError, Store, StoreLimitsBuilder,
    Trap, TypedFunc, WasmParams, WasmResults,
};

use crate::error::WasmError;
use crate::fused::{self, Stage};
use crate::host::InstanceEnv;
use crate::http::{
    BodyOutcome, GrpcAction, GrpcEvent, HeadersOutcome, HttpCallRequest, HttpCallResponse,
    HttpCallState, PausedHead, RequestHead, ResponseHead, StreamAction, StreamInfo,
};
use crate::lent::Lent;
use crate::limits::Limits;
use crate::module::PluginModule;
use crate::state::{GuestExports, HostState, PluginConfig, tracing_sink};
use crate::usage::SAMPLE_EVERY;

/// The root (plugin) context's id. Stream contexts will count up from here.
pub(crate) const ROOT_CONTEXT_ID: i32 = 1;

/// A started plugin instance.
pub struct PluginInstance {
    store: Store<HostState>,
    instance: Instance,
    limits: Limits,
    next_context_id: i32,
    /// Looked up once: finding an export by name on every call doubles what a call costs.
    stream: StreamCallbacks,
    /// The callbacks a stream makes back to back, in one entry each ([`fused`]).
    fused: Option<FusedCalls>,
}

/// The exports of a plugin's fused-callbacks instance.
struct FusedCalls {
    /// `proxy_on_context_create` then `proxy_on_request_headers`.
    start: Option<TypedFunc<(i32, i32, i32, i32), i32>>,
    /// `proxy_on_response_headers` then, unless it paused or answered,
    /// `proxy_on_response_body` with the whole body.
    respond: Option<TypedFunc<(i32, i32, i32), i64>>,
    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    finish: Option<TypedFunc<i32, ()>>,
    /// Which callback runs (a [`Stage`]).
    stage: Global,
}

impl FusedCalls {
    /// Instantiates the plugin module's fused module next to `plugin`, linked to its exports.
    fn start(
        module: &PluginModule,
        plugin: &Instance,
        store: &mut Store<HostState>,
    ) -> Result<Option<FusedCalls>, WasmError> {
        let Some((shape, fused_module)) = &module.fused else {
            return Ok(None);
        };
        let abi = |e: wasmtime::Error| WasmError::Abi(format!("fused callbacks: {e:#}"));
        let mut imports = Vec::new();
        for name in shape.imports() {
            if name == fused::BODY_PHASE {
                let body_phase = Func::wrap(&mut *store, |mut caller: Caller<'_, HostState>| {
                    let http = &mut caller.data_mut().http;
                    http.response_hidden = http.response.hide();
                    http.body = http.body_aside.take();
                });
                imports.push(Extern::Func(body_phase));
                continue;
            }
            let func = plugin
                .get_func(&mut *store, name)
                .ok_or_else(|| WasmError::Abi(format!("fused callbacks: no export {name}")))?;
            imports.push(Extern::Func(func));
        }
        let fused = Instance::new(&mut *store, fused_module, &imports).map_err(abi)?;
        let stage = fused
            .get_global(&mut *store, fused::STAGE)
            .ok_or_else(|| WasmError::Abi("fused callbacks: no stage".into()))?;
        let start = fused_export(&fused, store, shape.fuses_start(), fused::START)?;
        let respond = fused_export(&fused, store, shape.fuses_response(), fused::RESPOND)?;
        let finish = fused_export(&fused, store, shape.fuses_finish(), fused::FINISH)?;
        // A local response sent from a fused callback stops the callbacks after it.
        store.data_mut().fused_stop = fused.get_global(&mut *store, fused::STOP);
        Ok(Some(FusedCalls {
            start,
            respond,
            finish,
            stage,
        }))
    }
}

impl Drop for PluginInstance {
    fn drop(&mut self) {
        // Its memory goes back to the pool: no longer this plugin's.
        if let Some(usage) = &self.store.data().usage {
            usage.memory_bytes.store(0, Ordering::Relaxed);
        }
    }
}

/// A headers callback in either of its ABI shapes.
enum HeadersCallback {
    /// 0.1.0: `(context_id, num_headers)`.
    WithoutEndOfStream(TypedFunc<(i32, i32), i32>),
    /// 0.2.x: `(context_id, num_headers, end_of_stream)`.
    WithEndOfStream(TypedFunc<(i32, i32, i32), i32>),
}

/// The per-stream callbacks the module exports (all optional). Not `Clone` on purpose: they
/// are called by reference (see `invoke`).
struct StreamCallbacks {
    on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    on_request_headers: Option<HeadersCallback>,
    on_response_headers: Option<HeadersCallback>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_http_call_response: Option<CallResponseCallback>,
    on_foreign_function: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_grpc_receive_initial_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_grpc_receive_trailing_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_new_connection: Option<TypedFunc<i32, i32>>,
    on_downstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_upstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_downstream_connection_close: Option<TypedFunc<(i32, i32), ()>>,
    on_upstream_connection_close: Option<TypedFunc<(i32, i32), ()>>,
}

/// `proxy_on_http_call_response(context_id, token, headers, body_size, trailers)`.
type CallResponseCallback = TypedFunc<(i32, i32, i32, i32, i32), ()>;

impl StreamCallbacks {
    fn resolve(instance: &Instance, store: &mut Store<HostState>) -> Result<Self, WasmError> {
        Ok(StreamCallbacks {
            on_context_create: typed(instance, store, "proxy_on_context_create")?,
            on_request_headers: headers(instance, store, "proxy_on_request_headers")?,
            on_response_headers: headers(instance, store, "proxy_on_response_headers")?,
            on_done: typed(instance, store, "proxy_on_done")?,
            on_log: typed(instance, store, "proxy_on_log")?,
            on_delete: typed(instance, store, "proxy_on_delete")?,
            on_tick: typed(instance, store, "proxy_on_tick")?,
            on_queue_ready: typed(instance, store, "proxy_on_queue_ready")?,
            on_request_body: typed(instance, store, "proxy_on_request_body")?,
            on_response_body: typed(instance, store, "proxy_on_response_body")?,
            on_request_trailers: typed(instance, store, "proxy_on_request_trailers")?,
            on_response_trailers: typed(instance, store, "proxy_on_response_trailers")?,
            on_http_call_response: typed(instance, store, "proxy_on_http_call_response")?,
            on_foreign_function: typed(instance, store, "proxy_on_foreign_function")?,
            on_grpc_receive_initial_metadata: typed(
                instance,
                store,
                "proxy_on_grpc_receive_initial_metadata",
            )?,
            on_grpc_receive: typed(instance, store, "proxy_on_grpc_receive")?,
            on_grpc_receive_trailing_metadata: typed(
                instance,
                store,
                "proxy_on_grpc_receive_trailing_metadata",
            )?,
            on_grpc_close: typed(instance, store, "proxy_on_grpc_close")?,
            on_new_connection: typed(instance, store, "proxy_on_new_connection")?,
            on_downstream_data: typed(instance, store, "proxy_on_downstream_data")?,
            on_upstream_data: typed(instance, store, "proxy_on_upstream_data")?,
            on_downstream_connection_close: typed(
                instance,
                store,
                "proxy_on_downstream_connection_close",
            )?,
            on_upstream_connection_close: typed(
                instance,
                store,
                "proxy_on_upstream_connection_close",
            )?,
        })
    }
}

/// A function of the fused instance, when its plugin's shape has it.
fn fused_export<P: WasmParams, R: WasmResults>(
    fused: &Instance,
    store: &mut Store<HostState>,
    exported: bool,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, WasmError> {
    if !exported {
        return Ok(None);
    }
    fused
        .get_typed_func(store, name)
        .map(Some)
        .map_err(|e| WasmError::Abi(format!("fused callbacks: {e:#}")))
}

/// An optional export with the signature the ABI gives it.
fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &'static str,
) -> Result<Option<TypedFunc<P, R>>, WasmError> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(func) => func
            .typed(&*store)
            .map(Some)
            .map_err(|e| WasmError::Abi(format!("{name}: {e:#}"))),
    }
}

/// A headers callback, in whichever of its two ABI shapes the module exports.
fn headers(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &'static str,
) -> Result<Option<HeadersCallback>, WasmError> {
    let Some(func) = instance.get_func(&mut *store, name) else {
        return Ok(None);
    };
    let abi = |e: wasmtime::Error| WasmError::Abi(format!("{name}: {e:#}"));
    let callback = if func.ty(&*store).params().len() == 2 {
        HeadersCallback::WithoutEndOfStream(func.typed(&*store).map_err(abi)?)
    } else {
        HeadersCallback::WithEndOfStream(func.typed(&*store).map_err(abi)?)
    };
    Ok(Some(callback))
}

/// A stream context inside a plugin instance: one HTTP request, or one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpContextId(i32);

impl HttpContextId {
    /// The id the guest knows the context by (stream actions and calls carry it).
    pub fn id(self) -> i32 {
        self.0
    }
}

/// Which connection of a TCP stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PeerSide {
    /// Client to proxy.
    Downstream,
    /// Proxy to upstream.
    Upstream,
}

/// Which body or trailers callback.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Downstream to upstream.
    Request,
    /// Upstream to downstream.
    Response,
}

impl PluginInstance {
    /// Instantiates `module` and runs the start sequence. Any failure (trap, deadline, memory
    /// limit, a plugin refusing its configuration) is an error with the reason, and the
    /// instance is gone.
    pub fn start(
        module: &PluginModule,
        config: Arc<PluginConfig>,
        limits: Limits,
        env: InstanceEnv,
    ) -> Result<PluginInstance, WasmError> {
        let state = HostState {
            config,
            usage: env.usage,
            calls: 0,
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.max_memory_bytes)
                // The plugin and its fused callbacks.
                .instances(2)
                .build(),
            // A sink of the embedder's takes every line; the tracing sink's level is the
            // subscriber's, asked when needed (it can change at runtime).
            log_level: env.log.is_some().then_some(LogLevel::Trace),
            log: env.log.unwrap_or_else(tracing_sink),
            exports: None,
            readable_buffer: None,
            tick_period_ms: 0,
            http: Default::default(),
            host: env.host,
            queue_ready: env.queue_ready,
            metrics: Vec::new(),
            callback_context: ROOT_CONTEXT_ID,
            effective_context: ROOT_CONTEXT_ID,
            stream_actions: Vec::new(),
            pending_calls: Vec::new(),
            last_call_token: 0,
            grpc_actions: Vec::new(),
            upstreams: env.upstreams,
            header_names: Default::default(),
            fused_stop: None,
        };
        let mut store = Store::new(module.engine.inner(), state);
        store.limiter(|state| &mut state.limits);
        // Start functions run during instantiation: they get a deadline too.
        store.set_epoch_deadline(limits.deadline_ticks());
        let instance = module.pre.instantiate(&mut store).map_err(|e| {
            if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
                WasmError::Runtime(format!(
                    "the instance pool is full ({e}); wasm.instance_slots sizes it"
                ))
            } else {
                classify("instantiate", e, &limits)
            }
        })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| WasmError::Abi("exports no memory".into()))?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&mut store, module.allocator)
            .map_err(|e| WasmError::Abi(format!("{}: {e:#}", module.allocator)))?;
        store.data_mut().exports = Some(GuestExports { memory, allocate });
        if let Some(usage) = &store.data().usage {
            let bytes = memory.data_size(&store) as u64;
            usage.memory_bytes.store(bytes, Ordering::Relaxed);
        }

        let stream = StreamCallbacks::resolve(&instance, &mut store)?;
        let fused = FusedCalls::start(module, &instance, &mut store)?;
        let mut plugin = PluginInstance {
            store,
            instance,
            limits,
            next_context_id: ROOT_CONTEXT_ID + 1,
            stream,
            fused,
        };
        if plugin.has("_initialize") {
            plugin.call::<(), ()>("_initialize", ())?;
            if plugin.has("main") {
                plugin.call::<(i32, i32), i32>("main", (0, 0))?;
            }
        } else if plugin.has("_start") {
            plugin.call::<(), ()>("_start", ())?;
        }
        if plugin.has("proxy_on_context_create") {
            plugin.call::<(i32, i32), ()>("proxy_on_context_create", (ROOT_CONTEXT_ID, 0))?;
        }
        let config = Arc::clone(&plugin.store.data().config);
        if plugin.has("proxy_on_vm_start") {
            let size = config.vm_configuration.len() as i32;
            plugin.store.data_mut().readable_buffer = Some(BufferType::VmConfiguration);
            let ok = plugin.call::<(i32, i32), i32>("proxy_on_vm_start", (ROOT_CONTEXT_ID, size));
            plugin.store.data_mut().readable_buffer = None;
            if ok? == 0 {
                return Err(WasmError::Refused("proxy_on_vm_start"));
            }
        }
        if plugin.has("proxy_on_configure") {
            let size = config.plugin_configuration.len() as i32;
            plugin.store.data_mut().readable_buffer = Some(BufferType::PluginConfiguration);
            let ok = plugin.call::<(i32, i32), i32>("proxy_on_configure", (ROOT_CONTEXT_ID, size));
            plugin.store.data_mut().readable_buffer = None;
            if ok? == 0 {
                return Err(WasmError::Refused("proxy_on_configure"));
            }
        }
        Ok(plugin)
    }

    /// Creates a stream context for one HTTP request (`proxy_on_context_create`).
    pub fn create_http_context(&mut self) -> Result<HttpContextId, WasmError> {
        let context = self.next_context();
        self.on_context_create(context)?;
        Ok(context)
    }

    fn on_context_create(&mut self, context: HttpContextId) -> Result<(), WasmError> {
        match &self.stream.on_context_create {
            Some(f) => invoke(
                &mut self.store,
                &self.limits,
                context.0,
                "proxy_on_context_create",
                f,
                (context.0, ROOT_CONTEXT_ID),
            ),
            None => Ok(()),
        }
    }

    fn next_context(&mut self) -> HttpContextId {
        let id = self.next_context_id;
        // Ids are not reused while the instance lives; wrap around far past any real count.
        self.next_context_id = self
            .next_context_id
            .checked_add(1)
            .unwrap_or(ROOT_CONTEXT_ID + 1);
        HttpContextId(id)
    }

    /// Starts a request's stream: creates its context, then runs `proxy_on_request_headers`
    /// on `head`, in one entry into the guest when the module has both ([`fused`]). The
    /// context comes back even when a callback failed (the instance is failed then, and its
    /// contexts with it).
    pub fn start_http_stream(
        &mut self,
        head: &mut RequestHead,
        stream: &mut StreamInfo,
        end_of_stream: bool,
    ) -> (HttpContextId, Result<HeadersOutcome, WasmError>) {
        let context = self.next_context();
        let Some(start) = self.fused.as_ref().and_then(|f| f.start.as_ref()) else {
            let result = self
                .on_context_create(context)
                .and_then(|()| self.on_request_headers(context, head, stream, end_of_stream));
            return (context, result);
        };
        let slot: Slot<RequestHead> = |http| &mut http.request;
        let http = &mut self.store.data_mut().http;
        lend(http, slot, head, stream);
        http.local_response = None;
        let count = header_count(http, Phase::Request);
        let action = invoke(
            &mut self.store,
            &self.limits,
            context.0,
            "proxy_on_request_headers",
            start,
            (context.0, ROOT_CONTEXT_ID, count, i32::from(end_of_stream)),
        );
        let result = match action {
            Ok(action) => Ok(headers_outcome(&mut self.store.data_mut().http, action)),
            Err(error) => Err(self.in_fused_stage(error)),
        };
        take_back(&mut self.store.data_mut().http, slot, head, stream);
        (context, result)
    }

    /// A fused call's error, named after the callback its stage says it failed in.
    fn in_fused_stage(&mut self, error: WasmError) -> WasmError {
        let Some(stage) = self.fused.as_ref().map(|f| f.stage) else {
            return error;
        };
        let callback = Stage::callback(stage.get(&mut self.store).i32().unwrap_or(0));
        match error {
            WasmError::Deadline { limit_ms, .. } => WasmError::Deadline { callback, limit_ms },
            WasmError::Trap { message, .. } => WasmError::Trap { callback, message },
            other => other,
        }
    }

    /// Runs `proxy_on_request_headers` on `head`, which the plugin may change.
    pub fn on_request_headers(
        &mut self,
        context: HttpContextId,
        head: &mut RequestHead,
        stream: &mut StreamInfo,
        end_of_stream: bool,
    ) -> Result<HeadersOutcome, WasmError> {
        if self.stream.on_request_headers.is_none() {
            return Ok(HeadersOutcome::Continue);
        }
        let slot: Slot<RequestHead> = |http| &mut http.request;
        lend(&mut self.store.data_mut().http, slot, head, stream);
        let result = self.headers_callback(Phase::Request, context, end_of_stream);
        take_back(&mut self.store.data_mut().http, slot, head, stream);
        result
    }

    /// Runs `proxy_on_response_headers` on `head`, which the plugin may change.
    pub fn on_response_headers(
        &mut self,
        context: HttpContextId,
        head: &mut ResponseHead,
        stream: &mut StreamInfo,
        end_of_stream: bool,
    ) -> Result<HeadersOutcome, WasmError> {
        // A module without the callback (a request-only filter) costs no move of the head.
        if self.stream.on_response_headers.is_none() {
            return Ok(HeadersOutcome::Continue);
        }
        let slot: Slot<ResponseHead> = |http| &mut http.response;
        lend(&mut self.store.data_mut().http, slot, head, stream);
        let result = self.headers_callback(Phase::Response, context, end_of_stream);
        take_back(&mut self.store.data_mut().http, slot, head, stream);
        result
    }

    /// Runs `proxy_on_response_headers` on `head` and then, if it let the response go on,
    /// `proxy_on_response_body` on `body`, the whole body (`end_of_stream`), in one entry into
    /// the guest when the module has both ([`fused`]). The body's outcome is `None` when its
    /// callback did not run: the headers callback paused or answered, and the body waits (or
    /// is never delivered).
    pub fn on_whole_response(
        &mut self,
        context: HttpContextId,
        head: &mut ResponseHead,
        body: &mut Bytes,
        stream: &mut StreamInfo,
    ) -> Result<(HeadersOutcome, Option<BodyOutcome>), WasmError> {
        let Some(respond) = self.fused.as_ref().and_then(|f| f.respond.as_ref()) else {
            let outcome = self.on_response_headers(context, head, stream, false)?;
            if outcome != HeadersOutcome::Continue {
                return Ok((outcome, None));
            }
            let body_outcome = self.on_body(Direction::Response, context, body, stream, true)?;
            return Ok((outcome, Some(body_outcome)));
        };
        let size = i32::try_from(body.len()).unwrap_or(i32::MAX);
        let slot: Slot<ResponseHead> = |http| &mut http.response;
        let http = &mut self.store.data_mut().http;
        lend(http, slot, head, stream);
        // The body comes into reach when its phase begins (the host import between the two).
        http.body_aside = Some((BufferType::HttpResponseBody, std::mem::take(body)));
        http.local_response = None;
        let count = header_count(http, Phase::Response);
        let action = invoke(
            &mut self.store,
            &self.limits,
            context.0,
            "proxy_on_response_headers",
            respond,
            (context.0, count, size),
        );
        let result = match action {
            Ok(answer) => {
                let http = &mut self.store.data_mut().http;
                // The low half is the action, as the guest returned it.
                let action = answer as u32 as i32;
                if answer & fused::BODY_RAN != 0 {
                    body_outcome(Ok(action), http)
                        .map(|body| (HeadersOutcome::Continue, Some(body)))
                } else {
                    Ok((headers_outcome(http, action), None))
                }
            }
            Err(error) => Err(self.in_fused_stage(error)),
        };
        let http = &mut self.store.data_mut().http;
        if let Some((_, changed)) = http.body.take().or_else(|| http.body_aside.take()) {
            *body = changed;
        }
        if std::mem::take(&mut http.response_hidden) {
            http.response.show();
        }
        take_back(http, slot, head, stream);
        result
    }

    /// `proxy_on_tick` on the root context; the host calls it every `tick_period`.
    pub fn on_tick(&mut self) -> Result<(), WasmError> {
        match &self.stream.on_tick {
            Some(f) => invoke(
                &mut self.store,
                &self.limits,
                ROOT_CONTEXT_ID,
                "proxy_on_tick",
                f,
                ROOT_CONTEXT_ID,
            ),
            None => Ok(()),
        }
    }

    /// `proxy_on_queue_ready`: a queue this instance registered has messages.
    pub fn on_queue_ready(&mut self, ready: crate::QueueReady) -> Result<(), WasmError> {
        match &self.stream.on_queue_ready {
            Some(f) => invoke(
                &mut self.store,
                &self.limits,
                ready.context_id,
                "proxy_on_queue_ready",
                f,
                (ready.context_id, ready.token as i32),
            ),
            None => Ok(()),
        }
    }

    fn headers_callback(
        &mut self,
        phase: Phase,
        context: HttpContextId,
        end_of_stream: bool,
    ) -> Result<HeadersOutcome, WasmError> {
        let (name, callback) = match phase {
            Phase::Request => ("proxy_on_request_headers", &self.stream.on_request_headers),
            Phase::Response => (
                "proxy_on_response_headers",
                &self.stream.on_response_headers,
            ),
        };
        let Some(callback) = callback else {
            return Ok(HeadersOutcome::Continue);
        };
        let count = header_count(&self.store.data().http, phase);
        self.store.data_mut().http.local_response = None;
        // Borrowed, not cloned: a TypedFunc clone takes a reference on its registered type.
        let action = match callback {
            HeadersCallback::WithoutEndOfStream(f) => invoke(
                &mut self.store,
                &self.limits,
                context.0,
                name,
                f,
                (context.0, count),
            )?,
            HeadersCallback::WithEndOfStream(f) => invoke(
                &mut self.store,
                &self.limits,
                context.0,
                name,
                f,
                (context.0, count, i32::from(end_of_stream)),
            )?,
        };
        Ok(headers_outcome(&mut self.store.data_mut().http, action))
    }

    /// Ends a stream context: `proxy_on_done`, then `proxy_on_log` and `proxy_on_delete`
    /// (Envoy's order). The heads, as the request and the response left, are readable from
    /// `proxy_on_log` (lent for the call and given back, for the next filter's).
    pub fn finish_http_context(
        &mut self,
        context: HttpContextId,
        request: &mut Option<RequestHead>,
        response: &mut Option<ResponseHead>,
    ) -> Result<(), WasmError> {
        if let Some(finish) = self.fused.as_ref().and_then(|f| f.finish.as_ref()) {
            // One entry for all three. The heads are readable from `proxy_on_done` on too,
            // as in Envoy, where the stream still exists then.
            lend_logged_heads(&mut self.store.data_mut().http, request, response);
            let finished = invoke(
                &mut self.store,
                &self.limits,
                context.0,
                "proxy_on_done",
                finish,
                context.0,
            );
            take_logged_heads_back(&mut self.store.data_mut().http, request, response);
            return finished.map_err(|error| self.in_fused_stage(error));
        }
        if let Some(f) = &self.stream.on_done {
            // A plugin that answers false asks to finish later (proxy_done); streams here
            // end with the exchange, so the host goes on with log and delete regardless.
            invoke(
                &mut self.store,
                &self.limits,
                context.0,
                "proxy_on_done",
                f,
                context.0,
            )?;
        }
        if let Some(f) = &self.stream.on_log {
            lend_logged_heads(&mut self.store.data_mut().http, request, response);
            let logged = invoke(
                &mut self.store,
                &self.limits,
                context.0,
                "proxy_on_log",
                f,
                context.0,
            );
            take_logged_heads_back(&mut self.store.data_mut().http, request, response);
            logged?;
        }
        if let Some(f) = &self.stream.on_delete {
            invoke(
                &mut self.store,
                &self.limits,
                context.0,
                "proxy_on_delete",
                f,
                context.0,
            )?;
        }
        Ok(())
    }

    /// Whether the module exports `proxy_on_log` (then the stream keeps its heads for it).
    pub fn has_log_callback(&self) -> bool {
        self.stream.on_log.is_some()
    }

    /// Whether the module has a body callback for `direction` (SDK-built modules always do;
    /// hand-written ones may not, and their bodies then stream without guest calls).
    pub fn has_body_callback(&self, direction: Direction) -> bool {
        match direction {
            Direction::Request => self.stream.on_request_body.is_some(),
            Direction::Response => self.stream.on_response_body.is_some(),
        }
    }

    /// Runs `proxy_on_request_body` / `proxy_on_response_body` on `body`, everything the
    /// stream holds for this filter so far; the plugin may read and change it. The bytes are
    /// lent, not copied: a plugin that does not change them hands back the same buffer.
    pub fn on_body(
        &mut self,
        direction: Direction,
        context: HttpContextId,
        body: &mut Bytes,
        stream: &mut StreamInfo,
        end_of_stream: bool,
    ) -> Result<BodyOutcome, WasmError> {
        let (name, callback, buffer) = match direction {
            Direction::Request => (
                "proxy_on_request_body",
                &self.stream.on_request_body,
                BufferType::HttpRequestBody,
            ),
            Direction::Response => (
                "proxy_on_response_body",
                &self.stream.on_response_body,
                BufferType::HttpResponseBody,
            ),
        };
        let Some(callback) = callback else {
            return Ok(BodyOutcome::Continue);
        };
        let size = i32::try_from(body.len()).unwrap_or(i32::MAX);
        let http = &mut self.store.data_mut().http;
        http.body = Some((buffer, std::mem::take(body)));
        http.stream = Some(std::mem::take(stream));
        http.local_response = None;
        let action = invoke(
            &mut self.store,
            &self.limits,
            context.0,
            name,
            callback,
            (context.0, size, i32::from(end_of_stream)),
        );
        let http = &mut self.store.data_mut().http;
        if let Some((_, changed)) = http.body.take() {
            *body = changed;
        }
        if let Some(changed) = http.stream.take() {
            *stream = changed;
        }
        body_outcome(action, http)
    }

    /// Runs `proxy_on_request_trailers` / `proxy_on_response_trailers` on `trailers`.
    pub fn on_trailers(
        &mut self,
        direction: Direction,
        context: HttpContextId,
        trailers: &mut HeaderMap,
        stream: &mut StreamInfo,
    ) -> Result<BodyOutcome, WasmError> {
        let (name, callback) = match direction {
            Direction::Request => (
                "proxy_on_request_trailers",
                &self.stream.on_request_trailers,
            ),
            Direction::Response => (
                "proxy_on_response_trailers",
                &self.stream.on_response_trailers,
            ),
        };
        let Some(callback) = callback else {
            return Ok(BodyOutcome::Continue);
        };
        let count = i32::try_from(trailers.len()).unwrap_or(i32::MAX);
        let slot: Slot<HeaderMap> = match direction {
            Direction::Request => |http| &mut http.request_trailers,
            Direction::Response => |http| &mut http.response_trailers,
        };
        let http = &mut self.store.data_mut().http;
        lend(http, slot, trailers, stream);
        http.local_response = None;
        let action = invoke(
            &mut self.store,
            &self.limits,
            context.0,
            name,
            callback,
            (context.0, count),
        );
        let http = &mut self.store.data_mut().http;
        take_back(http, slot, trailers, stream);
        body_outcome(action, http)
    }

    /// Delivers an HTTP call's response (`None`: the call failed) to the context that made
    /// it. For a paused stream its head and info are readable and writable meanwhile (a
    /// filter typically adds a header from the answer, then resumes).
    /// What the plugin decided comes back through [`PluginInstance::take_stream_actions`].
    pub fn on_http_call_response(
        &mut self,
        call: &HttpCallRequest,
        response: Option<HttpCallResponse>,
        mut head: Option<PausedHead<'_>>,
        mut stream: Option<&mut StreamInfo>,
    ) -> Result<(), WasmError> {
        let Some(callback) = &self.stream.on_http_call_response else {
            return Ok(());
        };
        let (headers, body, trailers) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                // `:status` counts as a field.
                1 + r.headers.len(),
                r.body.len(),
                r.trailers.len(),
            )
        });
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let http = &mut self.store.data_mut().http;
        http.call_response = response;
        lend_to_answer(http, &mut head, &mut stream);
        // Calls belong to the root context, as in Envoy: the callback gets the root's id and
        // the SDK finds the caller by token and makes it the effective context.
        let result = invoke(
            &mut self.store,
            &self.limits,
            ROOT_CONTEXT_ID,
            "proxy_on_http_call_response",
            callback,
            (
                ROOT_CONTEXT_ID,
                call.token as i32,
                count(headers),
                count(body),
                count(trailers),
            ),
        );
        let state = self.store.data_mut();
        state.http.call_response = None;
        return_from_answer(state, call.context_id, head, stream);
        result
    }

    /// `proxy_on_foreign_function` on the root context: the host calls into the plugin
    /// (an answer to an earlier foreign call, say), with `arguments` readable as
    /// `FOREIGN_FUNCTION_ARGUMENTS`.
    pub fn on_foreign_function(
        &mut self,
        function_id: u32,
        arguments: Vec<u8>,
    ) -> Result<(), WasmError> {
        let Some(callback) = &self.stream.on_foreign_function else {
            return Ok(());
        };
        let size = i32::try_from(arguments.len()).unwrap_or(i32::MAX);
        self.store.data_mut().http.foreign_arguments = Some(arguments);
        let result = invoke(
            &mut self.store,
            &self.limits,
            ROOT_CONTEXT_ID,
            "proxy_on_foreign_function",
            callback,
            (ROOT_CONTEXT_ID, function_id as i32, size),
        );
        self.store.data_mut().http.foreign_arguments = None;
        result
    }

    /// Delivers a gRPC event for the call `token` on the root context (the SDKs find the
    /// caller by token, as for HTTP calls). For a call a paused stream made, its head and
    /// info are readable and writable meanwhile.
    pub fn on_grpc(
        &mut self,
        call: (u32, i32),
        event: GrpcEvent,
        mut head: Option<PausedHead<'_>>,
        mut stream: Option<&mut StreamInfo>,
    ) -> Result<(), WasmError> {
        let (token, context_id) = call;
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let http = &mut self.store.data_mut().http;
        lend_to_answer(http, &mut head, &mut stream);
        let (name, callback, argument) = match event {
            GrpcEvent::InitialMetadata(fields) => {
                let n = count(fields.len());
                http.grpc_metadata = Some((MapType::GrpcReceiveInitialMetadata, fields));
                (
                    "proxy_on_grpc_receive_initial_metadata",
                    &self.stream.on_grpc_receive_initial_metadata,
                    n,
                )
            }
            GrpcEvent::Message(message) => {
                let n = count(message.len());
                http.grpc_message = Some(message);
                ("proxy_on_grpc_receive", &self.stream.on_grpc_receive, n)
            }
            GrpcEvent::TrailingMetadata(fields) => {
                let n = count(fields.len());
                http.grpc_metadata = Some((MapType::GrpcReceiveTrailingMetadata, fields));
                (
                    "proxy_on_grpc_receive_trailing_metadata",
                    &self.stream.on_grpc_receive_trailing_metadata,
                    n,
                )
            }
            GrpcEvent::Close { status, message } => {
                http.grpc_status = Some((status, message));
                (
                    "proxy_on_grpc_close",
                    &self.stream.on_grpc_close,
                    status as i32,
                )
            }
        };
        let result = match callback {
            Some(f) => invoke(
                &mut self.store,
                &self.limits,
                ROOT_CONTEXT_ID,
                name,
                f,
                (ROOT_CONTEXT_ID, token as i32, argument),
            ),
            None => Ok(()),
        };
        let state = self.store.data_mut();
        let http = &mut state.http;
        http.grpc_metadata = None;
        http.grpc_message = None;
        http.grpc_status = None;
        return_from_answer(state, context_id, head, stream);
        result
    }

    /// Whether the plugin asked for anything (HTTP calls, stream actions, gRPC actions) since
    /// the last take: most callbacks ask for nothing, and then there is nothing to take.
    pub fn has_requests(&self) -> bool {
        let state = self.store.data();
        !(state.pending_calls.is_empty()
            && state.stream_actions.is_empty()
            && state.grpc_actions.is_empty())
    }

    /// gRPC calls opened, messages sent, calls closed or cancelled since the last time.
    pub fn take_grpc_actions(&mut self) -> Vec<GrpcAction> {
        std::mem::take(&mut self.store.data_mut().grpc_actions)
    }

    /// `proxy_on_new_connection` for a TCP stream context. `Ok(false)`: the plugin paused, and
    /// the connection waits (no upstream, client data unread) until it resumes, as in Envoy.
    pub fn on_new_connection(&mut self, context: HttpContextId) -> Result<bool, WasmError> {
        let Some(f) = &self.stream.on_new_connection else {
            return Ok(true);
        };
        let action = invoke(
            &mut self.store,
            &self.limits,
            context.0,
            "proxy_on_new_connection",
            f,
            context.0,
        )?;
        Ok(action == 0)
    }

    /// `proxy_on_downstream_data` / `proxy_on_upstream_data` on `data` (everything held for
    /// this filter so far), readable and writable as `DOWNSTREAM_DATA` / `UPSTREAM_DATA`.
    /// `Ok(false)`: the plugin paused, hold the data.
    pub fn on_tcp_data(
        &mut self,
        side: PeerSide,
        context: HttpContextId,
        data: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<bool, WasmError> {
        let (name, callback, buffer) = match side {
            PeerSide::Downstream => (
                "proxy_on_downstream_data",
                &self.stream.on_downstream_data,
                BufferType::DownstreamData,
            ),
            PeerSide::Upstream => (
                "proxy_on_upstream_data",
                &self.stream.on_upstream_data,
                BufferType::UpstreamData,
            ),
        };
        let Some(callback) = callback else {
            return Ok(true);
        };
        let size = i32::try_from(data.len()).unwrap_or(i32::MAX);
        // The connection's buffer is lent as shared bytes and given back as a Vec: no copy
        // unless the plugin kept a reference (it cannot past the callback).
        self.store.data_mut().http.body = Some((buffer, Bytes::from(std::mem::take(data))));
        let action = invoke(
            &mut self.store,
            &self.limits,
            context.0,
            name,
            callback,
            (context.0, size, i32::from(end_of_stream)),
        );
        if let Some((_, changed)) = self.store.data_mut().http.body.take() {
            *data = Vec::from(changed);
        }
        Ok(action? == 0)
    }

    /// `proxy_on_downstream_connection_close` / `proxy_on_upstream_connection_close`.
    pub fn on_tcp_close(
        &mut self,
        side: PeerSide,
        context: HttpContextId,
        peer: PeerType,
    ) -> Result<(), WasmError> {
        let (name, callback) = match side {
            PeerSide::Downstream => (
                "proxy_on_downstream_connection_close",
                &self.stream.on_downstream_connection_close,
            ),
            PeerSide::Upstream => (
                "proxy_on_upstream_connection_close",
                &self.stream.on_upstream_connection_close,
            ),
        };
        match callback {
            Some(f) => invoke(
                &mut self.store,
                &self.limits,
                context.0,
                name,
                f,
                (context.0, peer as i32),
            ),
            None => Ok(()),
        }
    }

    /// HTTP calls the plugin made since the last time, for the host to send.
    pub fn take_http_calls(&mut self) -> Vec<HttpCallRequest> {
        std::mem::take(&mut self.store.data_mut().pending_calls)
    }

    /// Continue / close / local response the plugin addressed to streams since the last time.
    pub fn take_stream_actions(&mut self) -> Vec<(i32, StreamAction)> {
        std::mem::take(&mut self.store.data_mut().stream_actions)
    }

    fn has(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls an export, found by name, under the deadline (start sequence only).
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        args: P,
    ) -> Result<R, WasmError> {
        let func: TypedFunc<P, R> = self
            .instance
            .get_typed_func(&mut self.store, name)
            .map_err(|e| WasmError::Abi(format!("{name}: {e:#}")))?;
        let state = self.store.data_mut();
        state.callback_context = ROOT_CONTEXT_ID;
        state.effective_context = ROOT_CONTEXT_ID;
        self.store.set_epoch_deadline(self.limits.deadline_ticks());
        func.call(&mut self.store, args)
            .map_err(|e| classify(name, e, &self.limits))
    }

    /// Bytes of linear memory the instance holds.
    pub fn memory_bytes(&mut self) -> usize {
        match self.store.data().exports.as_ref() {
            Some(exports) => exports.memory.data_size(&self.store),
            None => 0,
        }
    }

    /// The tick period the plugin asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }
}

/// Which headers callback.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

/// Where in the callback state a head or trailers map goes while the guest works on it.
type Slot<H> = fn(&mut HttpCallState) -> &mut Lent<H>;

/// Lends `head` and moves `stream` into the store for a callback (neither is copied).
fn lend<H>(http: &mut HttpCallState, slot: Slot<H>, head: &mut H, stream: &mut StreamInfo) {
    slot(http).lend(head);
    http.stream = Some(std::mem::take(stream));
}

/// Lends a paused stream's head and info (when in reach) to an HTTP call's or gRPC call's
/// answer callback, with no local response yet.
fn lend_to_answer(
    http: &mut HttpCallState,
    head: &mut Option<PausedHead<'_>>,
    stream: &mut Option<&mut StreamInfo>,
) {
    match head {
        Some(PausedHead::Request(request)) => http.request.lend(request),
        Some(PausedHead::Response(response)) => http.response.lend(response),
        None => {}
    }
    http.stream = stream.as_mut().map(|s| std::mem::take(&mut **s));
    http.local_response = None;
}

/// After an answer callback: the head and info go back to the stream, and a local response the
/// callback sent becomes the stream's action.
fn return_from_answer(
    state: &mut HostState,
    context_id: i32,
    head: Option<PausedHead<'_>>,
    stream: Option<&mut StreamInfo>,
) {
    let http = &mut state.http;
    match head {
        Some(PausedHead::Request(request)) => http.request.give_back(request),
        Some(PausedHead::Response(response)) => http.response.give_back(response),
        None => {}
    }
    if let (Some(stream), Some(changed)) = (stream, http.stream.take()) {
        *stream = changed;
    }
    if let Some(local) = http.local_response.take() {
        state
            .stream_actions
            .push((context_id, StreamAction::LocalResponse(local)));
    }
}

/// Lends the heads, as the request and the response left, to a stream's last callbacks:
/// readable, not writable.
fn lend_logged_heads(
    http: &mut HttpCallState,
    request: &mut Option<RequestHead>,
    response: &mut Option<ResponseHead>,
) {
    if let Some(request) = request {
        http.request.lend(request);
    }
    if let Some(response) = response {
        http.response.lend(response);
    }
    http.logging = true;
}

/// Takes the heads back after a stream's last callbacks. The heads only: the rest of the
/// callback state is empty then, and taking all of it would copy a kilobyte per request.
fn take_logged_heads_back(
    http: &mut HttpCallState,
    request: &mut Option<RequestHead>,
    response: &mut Option<ResponseHead>,
) {
    if let Some(request) = request {
        http.request.give_back(request);
    }
    if let Some(response) = response {
        http.response.give_back(response);
    }
    http.logging = false;
    // Too late for an answer: the response has gone.
    http.local_response = None;
}

fn take_back<H>(http: &mut HttpCallState, slot: Slot<H>, head: &mut H, stream: &mut StreamInfo) {
    slot(http).give_back(head);
    if let Some(changed) = http.stream.take() {
        *stream = changed;
    }
}

/// What a body or trailers callback decided: its local answer if it gave one, else its
/// action. Envoy's data statuses: 0 continues; StopIterationAndBuffer, …AndWatermark and
/// …NoBuffer all hold the data here until the filter lets it go.
fn body_outcome(
    action: Result<i32, WasmError>,
    http: &mut HttpCallState,
) -> Result<BodyOutcome, WasmError> {
    let action = action?;
    if let Some(local) = http.local_response.take() {
        return Ok(BodyOutcome::LocalResponse(Box::new(local)));
    }
    Ok(if action == 0 {
        BodyOutcome::Continue
    } else {
        BodyOutcome::Buffer
    })
}

/// What a headers callback decided: its local answer if it gave one, else its action.
fn headers_outcome(http: &mut HttpCallState, action: i32) -> HeadersOutcome {
    if let Some(local) = http.local_response.take() {
        return HeadersOutcome::LocalResponse(Box::new(local));
    }
    match Action::try_from(action as u32) {
        Ok(Action::Pause) => HeadersOutcome::Pause,
        // Unknown values continue, as in Envoy.
        _ => HeadersOutcome::Continue,
    }
}

/// The `num_headers` argument: fields as the guest will see them.
fn header_count(http: &crate::http::HttpCallState, phase: Phase) -> i32 {
    let count = match phase {
        // Pseudo-headers count; `host` travels as `:authority`.
        Phase::Request => http.request.get().map_or(0, |r| {
            4 + r.headers.len() - usize::from(r.headers.contains_key(http::header::HOST))
        }),
        Phase::Response => http.response.get().map_or(0, |r| 1 + r.headers.len()),
    };
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Calls a resolved export under the deadline. A free function so that a callback can stay
/// borrowed from the instance while its store is borrowed mutably.
fn invoke<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    limits: &Limits,
    context: i32,
    name: &'static str,
    func: &TypedFunc<P, R>,
    args: P,
) -> Result<R, WasmError> {
    let state = store.data_mut();
    state.callback_context = context;
    state.effective_context = context;
    state.calls += 1;
    let calls = state.calls;
    let timed = state.usage.is_some() && calls.is_multiple_of(SAMPLE_EVERY);
    store.set_epoch_deadline(limits.deadline_ticks());
    let started = timed.then(std::time::Instant::now);
    let result = func.call(&mut *store, args);
    if let Some(usage) = &store.data().usage {
        // One writer per record: stores, not atomic adds.
        usage.calls.store(calls, Ordering::Relaxed);
        if let Some(started) = started {
            let scaled = u64::try_from(started.elapsed().as_nanos())
                .unwrap_or(u64::MAX)
                .saturating_mul(SAMPLE_EVERY);
            let total = usage.nanos.load(Ordering::Relaxed).saturating_add(scaled);
            usage.nanos.store(total, Ordering::Relaxed);
            if let Some(memory) = store.data().exports.as_ref().map(|e| e.memory) {
                let bytes = memory.data_size(&*store) as u64;
                usage.memory_bytes.store(bytes, Ordering::Relaxed);
            }
        }
    }
    result.map_err(|e| classify(name, e, limits))
}

fn classify(callback: &'static str, error: wasmtime::Error, limits: &Limits) -> WasmError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => WasmError::Deadline {
            callback,
            limit_ms: limits.call_deadline.as_millis(),
        },
        _ => WasmError::Trap {
            callback,
            message: format!("{error:#}"),
        },
    }
}
