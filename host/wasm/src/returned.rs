//! Header values returned to the guest with no entry from the host into the guest.
//!
//! The ABI returns a value in memory the guest allocates: the host calls the guest's
//! `malloc` (or `proxy_on_memory_allocate`) from inside the hostcall, copies the value in,
//! and writes where it went. That call is a crossing from the host into wasm, the dearest
//! kind (see [`crate::fused`]), on every header a filter reads.
//!
//! So the host makes a small module that stands between the plugin and the host for
//! `proxy_get_header_map_value`: the plugin imports it from there. It asks the host for the
//! value (the host keeps it and answers its length), calls the plugin's allocator itself, a
//! call from wasm to wasm, then has the host copy the value in. Two calls into the host
//! instead of one, and no crossing into the guest. The allocator is reached through a
//! one-entry table the host fills once the plugin exists: the module is instantiated first,
//! since the plugin imports from it.
//!
//! A trap in the allocator is a trap of the callback that read the header (with the host's
//! own call it was `INTERNAL_FAILURE`, which the SDKs turn into a trap anyway).

use wasm_encoder::{
    CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    Module, RefType, TableType, TypeSection, ValType,
};

/// The module the host's parts are imported from.
pub(crate) const IMPORTS: &str = "rustng";
/// `(map, key, key_size) -> i64`: finds the value and keeps it. The low half is the status;
/// the high half, when it is `OK`, the value's length.
pub(crate) const FETCH: &str = "header_value_fetch";
/// `(address, return_data, return_size) -> status`: copies the kept value to `address` (null
/// for an empty value) and writes where it is.
pub(crate) const PUT: &str = "value_put";
/// The table whose one entry is the plugin's allocator.
pub(crate) const ALLOCATOR: &str = "allocator";
/// What the module exports, for the plugin to import.
pub(crate) const GET_HEADER_MAP_VALUE: &str = "proxy_get_header_map_value";

/// The module, in its binary form.
pub(crate) fn encode() -> Vec<u8> {
    let i32s = |n: usize| vec![ValType::I32; n];
    let mut types = TypeSection::new();
    // 0: the hostcall as the plugin imports it.
    types.ty().function(i32s(5), i32s(1));
    // 1: fetch; 2: the allocator; 3: put.
    types.ty().function(i32s(3), vec![ValType::I64]);
    types.ty().function(i32s(1), i32s(1));
    types.ty().function(i32s(3), i32s(1));

    let mut imports = ImportSection::new();
    imports.import(IMPORTS, FETCH, EntityType::Function(1));
    imports.import(IMPORTS, PUT, EntityType::Function(3));
    imports.import(
        IMPORTS,
        ALLOCATOR,
        EntityType::Table(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: 1,
            maximum: Some(1),
            shared: false,
        }),
    );
    let (fetch, put) = (0, 1);

    // Locals after the five parameters: 5 the fetch's answer, 6 the length, 7 the address.
    let mut f = Function::new([(1, ValType::I64), (2, ValType::I32)]);
    let mut ins = f.instructions();
    ins.local_get(0)
        .local_get(1)
        .local_get(2)
        .call(fetch)
        .local_tee(5)
        .i32_wrap_i64();
    // Not found, or a bad argument: the status is the answer.
    ins.if_(wasm_encoder::BlockType::Empty)
        .local_get(5)
        .i32_wrap_i64()
        .return_()
        .end();
    ins.local_get(5)
        .i64_const(32)
        .i64_shr_u()
        .i32_wrap_i64()
        .local_tee(6);
    // An empty value is returned as a null address, with no allocation (as Envoy does).
    ins.if_(wasm_encoder::BlockType::Empty)
        .local_get(6)
        .i32_const(0)
        .call_indirect(0, 2)
        .local_set(7)
        .end();
    ins.local_get(7).local_get(3).local_get(4).call(put).end();

    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut code = CodeSection::new();
    code.function(&f);
    let mut exports = ExportSection::new();
    exports.export(GET_HEADER_MAP_VALUE, ExportKind::Func, 2);

    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&exports)
        .section(&code);
    module.finish()
}

/// Packs what fetch answers: a status, or `OK` with the value's length.
pub(crate) fn fetched(result: Result<usize, rustng_abi::Status>) -> i64 {
    match result.and_then(|len| u32::try_from(len).map_err(|_| rustng_abi::Status::InternalFailure))
    {
        Ok(len) => i64::from(len) << 32,
        Err(status) => i64::from(status as i32 as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_is_valid() {
        let engine = wasmtime::Engine::default();
        wasmtime::Module::new(&engine, encode()).expect("a valid module");
    }

    #[test]
    fn fetched_packs_the_status_low_and_the_length_high() {
        assert_eq!(fetched(Ok(0)), 0);
        assert_eq!(fetched(Ok(7)), 7 << 32);
        let not_found = fetched(Err(rustng_abi::Status::NotFound));
        assert_eq!(not_found >> 32, 0);
        assert_eq!(not_found as i32, rustng_abi::Status::NotFound as i32);
    }
}
