//! Callbacks the host makes back to back, run in one entry into the guest.
//!
//! Every call from the host into wasm pays for the crossing: wasmtime saves the host's
//! registers, sets the guest's stack limit and trap handling up, and undoes it all on the way
//! out. A call from wasm to wasm is a plain call. A stream's first two callbacks
//! (`proxy_on_context_create`, `proxy_on_request_headers`) and its last three (`proxy_on_done`,
//! `proxy_on_log`, `proxy_on_delete`) have nothing for the host to do between them, so the host
//! makes a small module for them: it imports those exports of the plugin, is instantiated in the
//! plugin's store beside it, and calls them in order. A stream then costs two entries fewer at
//! its start and end (an SDK-built filter has all five).
//!
//! The module's `stage` global names the callback that is running, so that a trap or a deadline
//! in a fused call is still reported against the callback it happened in.

use wasm_encoder::{
    CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function, FunctionSection,
    GlobalSection, GlobalType, ImportSection, Module, TypeSection, ValType,
};

/// Which of the fusable callbacks a plugin module exports, and in which shape: all a fused
/// module depends on, so one is made per shape and engine, not per plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct FusedShape {
    pub(crate) context_create: bool,
    /// `proxy_on_request_headers`, and whether it takes `end_of_stream` (ABI 0.2.x does, 0.1.0
    /// does not).
    pub(crate) request_headers: Option<bool>,
    pub(crate) done: bool,
    pub(crate) log: bool,
    pub(crate) delete: bool,
    /// `proxy_on_response_headers`, and whether it takes `end_of_stream`.
    pub(crate) response_headers: Option<bool>,
    pub(crate) response_body: bool,
}

/// The callback a fused call was in, as its `stage` global says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Stage {
    ContextCreate = 1,
    RequestHeaders = 2,
    Done = 3,
    Log = 4,
    Delete = 5,
    ResponseHeaders = 6,
    ResponseBody = 7,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::ContextCreate,
        Stage::RequestHeaders,
        Stage::Done,
        Stage::Log,
        Stage::Delete,
        Stage::ResponseHeaders,
        Stage::ResponseBody,
    ];

    /// The callback's ABI name.
    fn name(self) -> &'static str {
        match self {
            Stage::ContextCreate => "proxy_on_context_create",
            Stage::RequestHeaders => "proxy_on_request_headers",
            Stage::Done => "proxy_on_done",
            Stage::Log => "proxy_on_log",
            Stage::Delete => "proxy_on_delete",
            Stage::ResponseHeaders => "proxy_on_response_headers",
            Stage::ResponseBody => "proxy_on_response_body",
        }
    }

    /// The name of the callback a `stage` global's value stands for, for errors.
    pub(crate) fn callback(stage: i32) -> &'static str {
        Stage::ALL
            .into_iter()
            .find(|s| *s as i32 == stage)
            .map_or("fused callback", Stage::name)
    }
}

/// The fused module's exports.
pub(crate) const START: &str = "start";
pub(crate) const FINISH: &str = "finish";
pub(crate) const RESPOND: &str = "respond";
pub(crate) const STAGE: &str = "stage";
/// Set by the host when a callback sends a local response: the callbacks after it are not
/// made (Envoy ends the stream there).
pub(crate) const STOP: &str = "stop";
/// The module its imports come from (the plugin's exports, by their own names).
pub(crate) const IMPORTS: &str = "plugin";
/// The host's own import: called between the response's headers and body callbacks, it puts
/// the response head out of the body callback's reach, as Envoy has it.
pub(crate) const BODY_PHASE: &str = "rustng_response_body_phase";
/// Set in `respond`'s answer when the body callback ran.
pub(crate) const BODY_RAN: i64 = 1 << 32;

impl FusedShape {
    /// Whether a stream's start is worth fusing: both its callbacks exist.
    pub(crate) fn fuses_start(&self) -> bool {
        self.context_create && self.request_headers.is_some()
    }

    /// Whether a stream's end is worth fusing: at least two of its callbacks exist.
    pub(crate) fn fuses_finish(&self) -> bool {
        usize::from(self.done) + usize::from(self.log) + usize::from(self.delete) >= 2
    }

    /// Whether a whole response is worth fusing: both of its callbacks exist.
    pub(crate) fn fuses_response(&self) -> bool {
        self.response_headers.is_some() && self.response_body
    }

    /// The plugin's exports the fused module imports, in its import order.
    pub(crate) fn imports(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.fuses_start() {
            names.extend(["proxy_on_context_create", "proxy_on_request_headers"]);
        }
        if self.fuses_response() {
            names.extend([
                "proxy_on_response_headers",
                BODY_PHASE,
                "proxy_on_response_body",
            ]);
        }
        if self.fuses_finish() {
            for (present, name) in [
                (self.done, "proxy_on_done"),
                (self.log, "proxy_on_log"),
                (self.delete, "proxy_on_delete"),
            ] {
                if present {
                    names.push(name);
                }
            }
        }
        names
    }

    /// The fused module's bytes, or `None` when nothing fuses.
    ///
    /// `start(context, root, num_headers, end_of_stream) -> action` calls
    /// `proxy_on_context_create(context, root)` then returns
    /// `proxy_on_request_headers(context, num_headers[, end_of_stream])`.
    /// `respond(context, num_headers, body_size) -> i64` calls
    /// `proxy_on_response_headers(context, num_headers[, 0])` and, if it continued without a
    /// local response, `proxy_on_response_body(context, body_size, 1)`. It returns the last
    /// callback's action in the low 32 bits, and [`BODY_RAN`] set when that was the body's
    /// (the answer says it: reading a global from the host costs more than the call saves).
    /// `finish(context)` calls `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` (those that
    /// exist), dropping `proxy_on_done`'s answer as the host does.
    pub(crate) fn encode(&self) -> Option<Vec<u8>> {
        if !self.fuses_start() && !self.fuses_response() && !self.fuses_finish() {
            return None;
        }
        let i32s = |n: usize| vec![ValType::I32; n];
        let mut types = TypeSection::new();
        let mut imports = ImportSection::new();
        let mut functions = FunctionSection::new();
        let mut code = CodeSection::new();
        let mut exports = ExportSection::new();
        let mut next_type = 0;
        let mut add_type =
            |types: &mut TypeSection, params: Vec<ValType>, results: Vec<ValType>| {
                types.ty().function(params, results);
                next_type += 1;
                next_type - 1
            };
        // Imported functions are numbered first, in import order; the stage global is 0.
        let mut imported = 0;
        let mut import = |imports: &mut ImportSection, name: &str, ty: u32| {
            imports.import(IMPORTS, name, EntityType::Function(ty));
            imported += 1;
            imported - 1
        };
        let mut defined: Vec<(&str, u32, Function)> = Vec::new();
        // Globals: 0 is the stage, 1 the stop flag.
        let set_stage = |f: &mut Function, stage: Stage| {
            f.instructions().i32_const(stage as i32).global_set(0);
        };

        if let Some(with_end_of_stream) = self.request_headers.filter(|_| self.context_create) {
            let create = import(&mut imports, "proxy_on_context_create", {
                add_type(&mut types, i32s(2), vec![])
            });
            let headers_params = if with_end_of_stream { 3 } else { 2 };
            let headers = import(&mut imports, "proxy_on_request_headers", {
                add_type(&mut types, i32s(headers_params), i32s(1))
            });
            let ty = add_type(&mut types, i32s(4), i32s(1));
            let mut f = Function::new([]);
            set_stage(&mut f, Stage::ContextCreate);
            f.instructions().local_get(0).local_get(1).call(create);
            set_stage(&mut f, Stage::RequestHeaders);
            let mut body = f.instructions();
            body.local_get(0).local_get(2);
            if with_end_of_stream {
                body.local_get(3);
            }
            body.call(headers).end();
            defined.push((START, ty, f));
        }
        if let (Some(with_end_of_stream), true) = (self.response_headers, self.response_body) {
            let headers_params = if with_end_of_stream { 3 } else { 2 };
            let headers = import(&mut imports, "proxy_on_response_headers", {
                add_type(&mut types, i32s(headers_params), i32s(1))
            });
            let body_phase = import(&mut imports, BODY_PHASE, {
                add_type(&mut types, vec![], vec![])
            });
            let body = import(&mut imports, "proxy_on_response_body", {
                add_type(&mut types, i32s(3), i32s(1))
            });
            let ty = add_type(&mut types, i32s(3), vec![ValType::I64]);
            // One local: the headers callback's action.
            let mut f = Function::new([(1, ValType::I32)]);
            set_stage(&mut f, Stage::ResponseHeaders);
            let mut ins = f.instructions();
            ins.i32_const(0).global_set(1);
            ins.local_get(0).local_get(1);
            if with_end_of_stream {
                ins.i32_const(0);
            }
            ins.call(headers).local_tee(3);
            // Paused, or answered locally: the body waits, or is never delivered.
            ins.global_get(1)
                .i32_or()
                .if_(wasm_encoder::BlockType::Empty);
            ins.local_get(3).i64_extend_i32_u().return_().end();
            set_stage(&mut f, Stage::ResponseBody);
            f.instructions()
                .call(body_phase)
                .local_get(0)
                .local_get(2)
                .i32_const(1)
                .call(body)
                .i64_extend_i32_u()
                .i64_const(BODY_RAN)
                .i64_or()
                .end();
            defined.push((RESPOND, ty, f));
        }
        if self.fuses_finish() {
            let mut calls = Vec::new();
            if self.done {
                let ty = add_type(&mut types, i32s(1), i32s(1));
                calls.push((Stage::Done, import(&mut imports, "proxy_on_done", ty), true));
            }
            if self.log {
                let ty = add_type(&mut types, i32s(1), vec![]);
                calls.push((Stage::Log, import(&mut imports, "proxy_on_log", ty), false));
            }
            if self.delete {
                let ty = add_type(&mut types, i32s(1), vec![]);
                calls.push((
                    Stage::Delete,
                    import(&mut imports, "proxy_on_delete", ty),
                    false,
                ));
            }
            let ty = add_type(&mut types, i32s(1), vec![]);
            let mut f = Function::new([]);
            for (stage, index, returns) in calls {
                set_stage(&mut f, stage);
                f.instructions().local_get(0).call(index);
                if returns {
                    f.instructions().drop();
                }
            }
            f.instructions().end();
            defined.push((FINISH, ty, f));
        }

        let mut globals = GlobalSection::new();
        for (index, name) in [STAGE, STOP].into_iter().enumerate() {
            let mutable_i32 = GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            };
            globals.global(mutable_i32, &ConstExpr::i32_const(0));
            exports.export(name, ExportKind::Global, index as u32);
        }
        for (index, (name, ty, f)) in defined.iter().enumerate() {
            functions.function(*ty);
            code.function(f);
            let index = imported + u32::try_from(index).unwrap_or(u32::MAX);
            exports.export(name, ExportKind::Func, index);
        }
        let mut module = Module::new();
        module
            .section(&types)
            .section(&imports)
            .section(&functions)
            .section(&globals)
            .section(&exports)
            .section(&code);
        Some(module.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_encodes_a_valid_module_or_none() {
        for bits in 0u16..256 {
            let shape = FusedShape {
                context_create: bits & 1 != 0,
                request_headers: match (bits >> 1) & 3 {
                    0 => None,
                    1 => Some(false),
                    _ => Some(true),
                },
                done: bits & 8 != 0,
                log: bits & 16 != 0,
                delete: bits & 32 != 0,
                response_headers: (bits & 64 != 0).then_some(bits & 1 == 0),
                response_body: bits & 128 != 0,
            };
            let Some(bytes) = shape.encode() else {
                assert!(
                    !shape.fuses_start() && !shape.fuses_response() && !shape.fuses_finish(),
                    "{shape:?}"
                );
                continue;
            };
            let engine = wasmtime::Engine::default();
            let module = wasmtime::Module::new(&engine, &bytes)
                .unwrap_or_else(|e| panic!("{shape:?}: {e:#}"));
            let imported: Vec<&str> = module.imports().map(|i| i.name()).collect();
            assert_eq!(imported, shape.imports(), "{shape:?}");
            let exported: Vec<&str> = module.exports().map(|e| e.name()).collect();
            assert_eq!(exported.contains(&START), shape.fuses_start(), "{shape:?}");
            assert_eq!(
                exported.contains(&FINISH),
                shape.fuses_finish(),
                "{shape:?}"
            );
        }
    }
}
