//! One running copy of a plugin: its store, its root context, and the start sequence Envoy
//! runs (`_initialize`/`_start`, then `proxy_on_context_create`, `proxy_on_vm_start`,
//! `proxy_on_configure`), each call under the deadline.

use std::sync::Arc;
use std::time::Duration;

use rustng_abi::{Action, BufferType, LogLevel};
use wasmtime::{Instance, Store, StoreLimitsBuilder, Trap, TypedFunc, WasmParams, WasmResults};

use crate::error::WasmError;
use crate::host::InstanceEnv;
use crate::http::{HeadersOutcome, RequestHead, ResponseHead, StreamInfo};
use crate::limits::Limits;
use crate::module::PluginModule;
use crate::state::{GuestExports, HostState, PluginConfig, tracing_sink};

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
}

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
        })
    }
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

/// An HTTP stream context inside a plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpContextId(i32);

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
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.max_memory_bytes)
                .instances(1)
                .build(),
            log: env.log.unwrap_or_else(tracing_sink),
            log_level: LogLevel::Trace,
            exports: None,
            readable_buffer: None,
            tick_period_ms: 0,
            http: Default::default(),
            host: env.host,
            queue_ready: env.queue_ready,
            metrics: Vec::new(),
        };
        let mut store = Store::new(module.engine.inner(), state);
        store.limiter(|state| &mut state.limits);
        // Start functions run during instantiation: they get a deadline too.
        store.set_epoch_deadline(limits.deadline_ticks());
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify("instantiate", e, &limits))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| WasmError::Abi("exports no memory".into()))?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&mut store, module.allocator)
            .map_err(|e| WasmError::Abi(format!("{}: {e:#}", module.allocator)))?;
        store.data_mut().exports = Some(GuestExports { memory, allocate });

        let stream = StreamCallbacks::resolve(&instance, &mut store)?;
        let mut plugin = PluginInstance {
            store,
            instance,
            limits,
            next_context_id: ROOT_CONTEXT_ID + 1,
            stream,
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
        let id = self.next_context_id;
        // Ids are not reused while the instance lives; wrap around far past any real count.
        self.next_context_id = self
            .next_context_id
            .checked_add(1)
            .unwrap_or(ROOT_CONTEXT_ID + 1);
        if let Some(f) = &self.stream.on_context_create {
            invoke(
                &mut self.store,
                &self.limits,
                "proxy_on_context_create",
                f,
                (id, ROOT_CONTEXT_ID),
            )?;
        }
        Ok(HttpContextId(id))
    }

    /// Runs `proxy_on_request_headers` on `head`, which the plugin may change.
    pub fn on_request_headers(
        &mut self,
        context: HttpContextId,
        head: &mut RequestHead,
        stream: &mut StreamInfo,
        end_of_stream: bool,
    ) -> Result<HeadersOutcome, WasmError> {
        let http = &mut self.store.data_mut().http;
        http.request = Some(std::mem::take(head));
        http.stream = Some(std::mem::take(stream));
        let result = self.headers_callback(Phase::Request, context, end_of_stream);
        let http = &mut self.store.data_mut().http;
        if let Some(changed) = http.request.take() {
            *head = changed;
        }
        if let Some(changed) = http.stream.take() {
            *stream = changed;
        }
        result
    }

    /// Runs `proxy_on_response_headers` on `head`, which the plugin may change. `request` is
    /// readable (not writable) meanwhile, as in Envoy.
    pub fn on_response_headers(
        &mut self,
        context: HttpContextId,
        head: &mut ResponseHead,
        stream: &mut StreamInfo,
        end_of_stream: bool,
    ) -> Result<HeadersOutcome, WasmError> {
        let http = &mut self.store.data_mut().http;
        http.response = Some(std::mem::take(head));
        http.stream = Some(std::mem::take(stream));
        let result = self.headers_callback(Phase::Response, context, end_of_stream);
        let http = &mut self.store.data_mut().http;
        if let Some(changed) = http.response.take() {
            *head = changed;
        }
        if let Some(changed) = http.stream.take() {
            *stream = changed;
        }
        result
    }

    /// `proxy_on_tick` on the root context; the host calls it every `tick_period`.
    pub fn on_tick(&mut self) -> Result<(), WasmError> {
        match &self.stream.on_tick {
            Some(f) => invoke(
                &mut self.store,
                &self.limits,
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
            HeadersCallback::WithoutEndOfStream(f) => {
                invoke(&mut self.store, &self.limits, name, f, (context.0, count))?
            }
            HeadersCallback::WithEndOfStream(f) => invoke(
                &mut self.store,
                &self.limits,
                name,
                f,
                (context.0, count, i32::from(end_of_stream)),
            )?,
        };
        if let Some(local) = self.store.data_mut().http.local_response.take() {
            return Ok(HeadersOutcome::LocalResponse(local));
        }
        Ok(match Action::try_from(action as u32) {
            Ok(Action::Pause) => HeadersOutcome::Pause,
            // Unknown values continue, as in Envoy.
            _ => HeadersOutcome::Continue,
        })
    }

    /// Ends a stream context: `proxy_on_done`, then `proxy_on_log` and `proxy_on_delete`
    /// (Envoy's order). The heads are readable from `proxy_on_log`.
    pub fn finish_http_context(
        &mut self,
        context: HttpContextId,
        request: Option<RequestHead>,
        response: Option<ResponseHead>,
    ) -> Result<(), WasmError> {
        if let Some(f) = &self.stream.on_done {
            // A plugin that answers false asks to finish later (proxy_done); streams here
            // end with the exchange, so the host goes on with log and delete regardless.
            invoke(&mut self.store, &self.limits, "proxy_on_done", f, context.0)?;
        }
        if let Some(f) = &self.stream.on_log {
            self.store.data_mut().http.request = request;
            self.store.data_mut().http.response = response;
            let logged = invoke(&mut self.store, &self.limits, "proxy_on_log", f, context.0);
            self.store.data_mut().http = Default::default();
            logged?;
        }
        if let Some(f) = &self.stream.on_delete {
            invoke(
                &mut self.store,
                &self.limits,
                "proxy_on_delete",
                f,
                context.0,
            )?;
        }
        Ok(())
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

/// The `num_headers` argument: fields as the guest will see them.
fn header_count(http: &crate::http::HttpCallState, phase: Phase) -> i32 {
    let count = match phase {
        // Pseudo-headers count; `host` travels as `:authority`.
        Phase::Request => http.request.as_ref().map_or(0, |r| {
            4 + r.headers.len() - usize::from(r.headers.contains_key(http::header::HOST))
        }),
        Phase::Response => http.response.as_ref().map_or(0, |r| 1 + r.headers.len()),
    };
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Calls a resolved export under the deadline. A free function so that a callback can stay
/// borrowed from the instance while its store is borrowed mutably.
fn invoke<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    limits: &Limits,
    name: &'static str,
    func: &TypedFunc<P, R>,
    args: P,
) -> Result<R, WasmError> {
    store.set_epoch_deadline(limits.deadline_ticks());
    func.call(&mut *store, args)
        .map_err(|e| classify(name, e, limits))
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
