//! The WASI preview1 subset proxy-wasm SDKs use: output becomes log lines, clocks, randomness,
//! the plugin's own environment, no arguments, and no filesystem at all. The three stdio
//! descriptors exist (Go's runtime inspects them); there are no preopened directories;
//! nothing ever blocks a worker: `poll_oneoff` reports every clock as expired at once.

use std::time::Instant;

use rustng_abi::table::Module;
use rustng_abi::{LogLevel, Status, WasiClock, WasiErrno, WasiFd};
use wasmtime::{Caller, Linker};

use super::WASI_UNSTABLE;
use super::clock::unix_nanos;
use crate::limits::{MAX_LOG_MESSAGE, MAX_RANDOM_BYTES};
use crate::memory::{guest_memory, slice, write_bytes, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::WasiPreview1, "fd_write"),
    (Module::WasiPreview1, "clock_time_get"),
    (Module::WasiPreview1, "random_get"),
    (Module::WasiPreview1, "environ_sizes_get"),
    (Module::WasiPreview1, "environ_get"),
    (Module::WasiPreview1, "args_sizes_get"),
    (Module::WasiPreview1, "args_get"),
    (Module::WasiPreview1, "proc_exit"),
    (Module::WasiPreview1, "sched_yield"),
    (Module::WasiPreview1, "poll_oneoff"),
    (Module::WasiPreview1, "fd_close"),
    (Module::WasiPreview1, "fd_fdstat_get"),
    (Module::WasiPreview1, "fd_fdstat_set_flags"),
    (Module::WasiPreview1, "fd_prestat_get"),
    (Module::WasiPreview1, "fd_prestat_dir_name"),
];

/// Whether `fd` is stdin, stdout or stderr.
fn stdio(fd: i32) -> Result<(), WasiErrno> {
    if (0..=2).contains(&fd) {
        Ok(())
    } else {
        Err(WasiErrno::Badf)
    }
}

/// `filetype` of the stdio descriptors: a character device.
const CHARACTER_DEVICE: u8 = 2;
/// `eventtype` of a clock subscription.
const EVENT_CLOCK: u8 = 0;
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;

/// Answers every subscription at once: clocks as expired, descriptors as unsupported.
fn poll_oneoff(
    caller: &mut Caller<'_, HostState>,
    subscriptions: i32,
    events: i32,
    count: i32,
    written: i32,
) -> Result<(), WasiErrno> {
    let count = usize::try_from(count).map_err(|_| WasiErrno::Inval)?;
    let input = {
        let memory = guest_memory(caller).ok_or(WasiErrno::Fault)?;
        let len = count
            .checked_mul(SUBSCRIPTION_SIZE)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(WasiErrno::Inval)?;
        slice(memory, subscriptions, len).map_err(fault)?.to_vec()
    };
    let mut output = vec![0u8; count * EVENT_SIZE];
    for (subscription, event) in input
        .chunks_exact(SUBSCRIPTION_SIZE)
        .zip(output.chunks_exact_mut(EVENT_SIZE))
    {
        // userdata, then error (u16) and type (u8).
        event[..8].copy_from_slice(&subscription[..8]);
        let tag = subscription[8];
        if tag != EVENT_CLOCK {
            event[8..10].copy_from_slice(&(WasiErrno::Notsup as u16).to_le_bytes());
        }
        event[10] = tag;
    }
    write_bytes(caller, events, &output).map_err(fault)?;
    write_u32(caller, written, count as u32).map_err(fault)
}

fn errno(result: Result<(), WasiErrno>) -> i32 {
    match result {
        Ok(()) => WasiErrno::Success as i32,
        Err(e) => e as i32,
    }
}

/// Memory faults are `FAULT` in WASI's vocabulary.
fn fault(_: Status) -> WasiErrno {
    WasiErrno::Fault
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in ["wasi_snapshot_preview1", WASI_UNSTABLE] {
        linker.func_wrap(module, "sched_yield", |_: Caller<'_, HostState>| -> i32 {
            WasiErrno::Success as i32
        })?;
        linker.func_wrap(
            module,
            "poll_oneoff",
            |mut caller: Caller<'_, HostState>,
             subscriptions: i32,
             events: i32,
             count: i32,
             written: i32|
             -> i32 {
                errno(poll_oneoff(
                    &mut caller,
                    subscriptions,
                    events,
                    count,
                    written,
                ))
            },
        )?;
        linker.func_wrap(
            module,
            "fd_close",
            |_: Caller<'_, HostState>, fd: i32| -> i32 { errno(stdio(fd)) },
        )?;
        linker.func_wrap(
            module,
            "fd_fdstat_get",
            |mut caller: Caller<'_, HostState>, fd: i32, out: i32| -> i32 {
                errno(stdio(fd).and_then(|()| {
                    // filetype, flags, rights (base, inheriting): a plain character device.
                    let mut stat = [0u8; 24];
                    stat[0] = CHARACTER_DEVICE;
                    write_bytes(&mut caller, out, &stat).map_err(fault)
                }))
            },
        )?;
        linker.func_wrap(
            module,
            "fd_fdstat_set_flags",
            |_: Caller<'_, HostState>, fd: i32, _flags: i32| -> i32 { errno(stdio(fd)) },
        )?;
        // No preopened directories: every descriptor asked about is not one.
        linker.func_wrap(
            module,
            "fd_prestat_get",
            |_: Caller<'_, HostState>, _fd: i32, _out: i32| -> i32 { WasiErrno::Badf as i32 },
        )?;
        linker.func_wrap(
            module,
            "fd_prestat_dir_name",
            |_: Caller<'_, HostState>, _fd: i32, _path: i32, _len: i32| -> i32 {
                WasiErrno::Badf as i32
            },
        )?;
        linker.func_wrap(
            module,
            "fd_write",
            |mut caller: Caller<'_, HostState>,
             fd: i32,
             iovs: i32,
             iovs_len: i32,
             written: i32|
             -> i32 { errno(fd_write(&mut caller, fd, iovs, iovs_len, written)) },
        )?;
        linker.func_wrap(
            module,
            "clock_time_get",
            |mut caller: Caller<'_, HostState>, clock: i32, _precision: i64, out: i32| -> i32 {
                let result = (|| {
                    let now = match WasiClock::try_from(clock as u32) {
                        Ok(WasiClock::Realtime) => unix_nanos(),
                        Ok(WasiClock::Monotonic) => monotonic_nanos(),
                        Err(_) => return Err(WasiErrno::Notsup),
                    };
                    write_bytes(&mut caller, out, &now.to_le_bytes()).map_err(fault)
                })();
                errno(result)
            },
        )?;
        linker.func_wrap(
            module,
            "random_get",
            |mut caller: Caller<'_, HostState>, buf: i32, len: i32| -> i32 {
                let result = (|| {
                    let len = len as u32 as usize;
                    if len > MAX_RANDOM_BYTES {
                        return Err(WasiErrno::Inval);
                    }
                    let mut bytes = vec![0u8; len];
                    getrandom::fill(&mut bytes).map_err(|_| WasiErrno::Inval)?;
                    write_bytes(&mut caller, buf, &bytes).map_err(fault)
                })();
                errno(result)
            },
        )?;
        linker.func_wrap(
            module,
            "environ_sizes_get",
            |mut caller: Caller<'_, HostState>, count_out: i32, size_out: i32| -> i32 {
                let env = &caller.data().config.environment;
                let count = env.len() as u32;
                let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
                let result = write_u32(&mut caller, count_out, count)
                    .and_then(|()| write_u32(&mut caller, size_out, size as u32))
                    .map_err(fault);
                errno(result)
            },
        )?;
        linker.func_wrap(
            module,
            "environ_get",
            |mut caller: Caller<'_, HostState>, array: i32, buffer: i32| -> i32 {
                errno(environ_get(&mut caller, array, buffer))
            },
        )?;
        linker.func_wrap(
            module,
            "args_sizes_get",
            |mut caller: Caller<'_, HostState>, argc_out: i32, size_out: i32| -> i32 {
                // Zero arguments, so that `args_get` is never called.
                let result = write_u32(&mut caller, argc_out, 0)
                    .and_then(|()| write_u32(&mut caller, size_out, 0))
                    .map_err(fault);
                errno(result)
            },
        )?;
        linker.func_wrap(
            module,
            "args_get",
            |_: Caller<'_, HostState>, _: i32, _: i32| -> i32 { WasiErrno::Success as i32 },
        )?;
        linker.func_wrap(
            module,
            "proc_exit",
            |_: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
                // Ends the current call like a trap: the failure policy decides what follows.
                Err(wasmtime::Error::msg(format!("proc_exit({code})")))
            },
        )?;
    }
    Ok(())
}

fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn fd_write(
    caller: &mut Caller<'_, HostState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    written: i32,
) -> Result<(), WasiErrno> {
    let level = match WasiFd::try_from(fd as u32) {
        Ok(WasiFd::Stdout) => LogLevel::Info,
        Ok(WasiFd::Stderr) => LogLevel::Error,
        Err(_) => return Err(WasiErrno::Badf),
    };
    let memory = guest_memory(caller).ok_or(WasiErrno::Fault)?;
    let count = iovs_len as u32 as usize;
    let table = slice(
        memory,
        iovs,
        i32::try_from(count.checked_mul(8).ok_or(WasiErrno::Fault)?)
            .map_err(|_| WasiErrno::Fault)?,
    )
    .map_err(fault)?;
    let mut text = Vec::new();
    let mut total: u32 = 0;
    for entry in table.chunks_exact(8) {
        let ptr = i32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let len = i32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let bytes = slice(memory, ptr, len).map_err(fault)?;
        total = total.saturating_add(bytes.len() as u32);
        let room = MAX_LOG_MESSAGE.saturating_sub(text.len());
        text.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    let state = caller.data();
    if state.logs(level) {
        let line = String::from_utf8_lossy(&text);
        let line = line.trim_end_matches('\n');
        if !line.is_empty() {
            (state.log)(&state.config.name, level, line);
        }
    }
    write_u32(caller, written, total).map_err(fault)
}

fn environ_get(
    caller: &mut Caller<'_, HostState>,
    array: i32,
    buffer: i32,
) -> Result<(), WasiErrno> {
    let env = caller.data().config.clone();
    let mut offset = buffer as u32;
    for (index, (key, value)) in env.environment.iter().enumerate() {
        let entry = format!("{key}={value}\0");
        write_bytes(caller, offset as i32, entry.as_bytes()).map_err(fault)?;
        let slot = (array as u32)
            .checked_add(4 * index as u32)
            .ok_or(WasiErrno::Fault)?;
        write_u32(caller, slot as i32, offset).map_err(fault)?;
        offset = offset
            .checked_add(entry.len() as u32)
            .ok_or(WasiErrno::Fault)?;
    }
    Ok(())
}
