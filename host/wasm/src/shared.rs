//! Shared data and shared queues: the only state proxy-wasm lets plugin instances share across
//! workers. Both are scoped by VM id, as in Envoy, so plugins that name the same `vm_id` see
//! the same keys and queues.
//!
//! These are process-wide and guarded by a lock, as Envoy's are. Only plugins that call the
//! shared-data or queue hostcalls ever touch them; the plain data path never does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "the guest's cross-worker store: only the shared-data hostcalls take this lock"
)]
use std::sync::Mutex;

use rustng_abi::Status;

/// Tells the worker that registered a queue that it has something to dequeue. Called with
/// the queue's token; must not block (the core sends on a channel).
pub type QueueNotifier = Arc<dyn Fn(QueueReady) + Send + Sync>;

/// A queue that became non-empty, addressed to the context that registered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueReady {
    /// The registering root context's id.
    pub context_id: i32,
    /// The queue's token.
    pub token: u32,
}

/// Values with their compare-and-swap stamps.
#[derive(Default)]
pub(crate) struct SharedData {
    #[allow(clippy::disallowed_types, reason = "see the module comment")]
    entries: Mutex<DataMap>,
}

#[derive(Default)]
struct DataMap {
    values: HashMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    last_cas: u32,
}

impl SharedData {
    /// The value of `key` in `vm_id`'s space and its current CAS stamp.
    pub(crate) fn get(&self, vm_id: &str, key: &[u8]) -> Result<(Vec<u8>, u32), Status> {
        let entries = self.entries.lock().map_err(|_| Status::InternalFailure)?;
        entries
            .values
            .get(&(vm_id.to_owned(), key.to_vec()))
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Stores `value` unless `cas` is non-zero and no longer the key's stamp. A key that does
    /// not exist yet is created whatever `cas` says (Envoy's behaviour).
    pub(crate) fn set(
        &self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
    ) -> Result<(), Status> {
        let mut entries = self.entries.lock().map_err(|_| Status::InternalFailure)?;
        let stamp = entries.next_cas();
        match entries.values.get_mut(&(vm_id.to_owned(), key.to_vec())) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return Err(Status::CasMismatch);
                }
                *entry = (value.to_vec(), stamp);
            }
            None => {
                entries
                    .values
                    .insert((vm_id.to_owned(), key.to_vec()), (value.to_vec(), stamp));
            }
        }
        Ok(())
    }
}

impl DataMap {
    /// Stamps never repeat while the process lives (wrapping past zero, which means "no CAS").
    fn next_cas(&mut self) -> u32 {
        self.last_cas = self.last_cas.wrapping_add(1).max(1);
        self.last_cas
    }
}

/// Named FIFO queues. A message is delivered once, to whoever dequeues it first.
#[derive(Default)]
pub(crate) struct SharedQueues {
    #[allow(clippy::disallowed_types, reason = "see the module comment")]
    queues: Mutex<QueueMap>,
}

#[derive(Default)]
struct QueueMap {
    tokens: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    last_token: u32,
}

struct Queue {
    messages: VecDeque<Vec<u8>>,
    /// The latest registrant is told when messages arrive, as in Envoy: a plugin's instances
    /// all register the same name, and the one that did last is the live one.
    owner: QueueReady,
    notify: Option<QueueNotifier>,
}

impl SharedQueues {
    /// Registers `name` in `vm_id`'s space, or returns the token it already has; either way
    /// the caller becomes the one told of new messages.
    pub(crate) fn register(
        &self,
        vm_id: &str,
        name: &str,
        context_id: i32,
        notify: Option<QueueNotifier>,
    ) -> Result<u32, Status> {
        let mut map = self.queues.lock().map_err(|_| Status::InternalFailure)?;
        if let Some(token) = map
            .tokens
            .get(&(vm_id.to_owned(), name.to_owned()))
            .copied()
        {
            if let Some(queue) = map.queues.get_mut(&token) {
                queue.owner = QueueReady { context_id, token };
                queue.notify = notify;
            }
            return Ok(token);
        }
        map.last_token = map
            .last_token
            .checked_add(1)
            .ok_or(Status::InternalFailure)?;
        let token = map.last_token;
        map.tokens
            .insert((vm_id.to_owned(), name.to_owned()), token);
        map.queues.insert(
            token,
            Queue {
                messages: VecDeque::new(),
                owner: QueueReady { context_id, token },
                notify,
            },
        );
        Ok(token)
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Result<u32, Status> {
        let map = self.queues.lock().map_err(|_| Status::InternalFailure)?;
        map.tokens
            .get(&(vm_id.to_owned(), name.to_owned()))
            .copied()
            .ok_or(Status::NotFound)
    }

    /// Appends a message and tells the queue's owner.
    pub(crate) fn enqueue(&self, token: u32, message: &[u8]) -> Result<(), Status> {
        let (owner, notify) = {
            let mut map = self.queues.lock().map_err(|_| Status::InternalFailure)?;
            let queue = map.queues.get_mut(&token).ok_or(Status::NotFound)?;
            queue.messages.push_back(message.to_vec());
            (queue.owner, queue.notify.clone())
        };
        // Outside the lock: the notifier may run arbitrary host code.
        if let Some(notify) = notify {
            notify(owner);
        }
        Ok(())
    }

    pub(crate) fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut map = self.queues.lock().map_err(|_| Status::InternalFailure)?;
        let queue = map.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.messages.pop_front().ok_or(Status::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_refuses_a_stale_stamp() {
        let data = SharedData::default();
        assert_eq!(data.get("vm", b"k"), Err(Status::NotFound));
        data.set("vm", b"k", b"1", 0).expect("create");
        let (value, cas) = data.get("vm", b"k").expect("present");
        assert_eq!(value, b"1");
        data.set("vm", b"k", b"2", cas).expect("current stamp");
        assert_eq!(data.set("vm", b"k", b"3", cas), Err(Status::CasMismatch));
        assert_eq!(data.get("vm", b"k").expect("present").0, b"2");
        // Another VM id is another space.
        assert_eq!(data.get("other", b"k"), Err(Status::NotFound));
    }

    #[test]
    #[allow(
        clippy::disallowed_types,
        reason = "collects notifications across threads in a test"
    )]
    fn queues_deliver_in_order_and_tell_the_latest_registrant() {
        let queues = SharedQueues::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let notify: QueueNotifier = Arc::new(move |ready| {
            if let Ok(mut seen) = sink.lock() {
                seen.push(ready);
            }
        });
        let token = queues.register("vm", "q", 7, None).expect("register");
        assert_eq!(queues.register("vm", "q", 1, Some(notify)), Ok(token));
        assert_eq!(queues.resolve("vm", "q"), Ok(token));
        assert_eq!(queues.resolve("vm", "nope"), Err(Status::NotFound));
        assert_eq!(queues.dequeue(token), Err(Status::Empty));
        queues.enqueue(token, b"a").expect("enqueue");
        queues.enqueue(token, b"b").expect("enqueue");
        assert_eq!(queues.dequeue(token).as_deref(), Ok(&b"a"[..]));
        assert_eq!(queues.dequeue(token).as_deref(), Ok(&b"b"[..]));
        assert_eq!(queues.enqueue(99, b"x"), Err(Status::NotFound));
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            vec![
                QueueReady {
                    context_id: 1,
                    token
                };
                2
            ]
        );
    }
}
