// Tells RustNg's core where the current request goes, through the rustng.route.* properties
// (docs/EXTENSIONS.md). A filter using these still runs in Envoy, where the properties mean
// nothing. Call them from onRequestHeaders (or before the request leaves). Each returns the
// host's status (WasmResultValues.Ok when it was taken).

import { set_property, WasmResultValues } from "@solo-io/proxy-runtime/runtime";

// The property names, as in abi/src/extensions.rs.
export const ROUTE_CLUSTER = "rustng.route.cluster";
export const ROUTE_TIMEOUT_MS = "rustng.route.timeout_ms";
export const ROUTE_RETRY_ON = "rustng.route.retry_on";
export const ROUTE_NUM_RETRIES = "rustng.route.num_retries";
export const ROUTE_PER_TRY_TIMEOUT_MS = "rustng.route.per_try_timeout_ms";
export const ROUTE_RETRIABLE_STATUS_CODES = "rustng.route.retriable_status_codes";
export const ROUTE_RETRY_BASE_INTERVAL_MS = "rustng.route.retry_base_interval_ms";
export const ROUTE_RETRY_MAX_INTERVAL_MS = "rustng.route.retry_max_interval_ms";
export const ROUTE_HASH_KEY = "rustng.route.hash_key";

function set(name: string, value: string): WasmResultValues {
  return set_property(name, String.UTF8.encode(value));
}

// Sets the current request's key for consistent hashing (RING_HASH and MAGLEV clusters): the
// same key goes to the same endpoint while it is in rotation.
export function setHashKey(key: string): WasmResultValues {
  return set(ROUTE_HASH_KEY, key);
}

// Sends the current request to `cluster` instead of the listener's default.
export function setCluster(cluster: string): WasmResultValues {
  return set(ROUTE_CLUSTER, cluster);
}

// Gives the upstream `timeoutMs` milliseconds to start its response, for this request only
// (with retries, for all attempts together).
export function setTimeoutMs(timeoutMs: u32): WasmResultValues {
  return set(ROUTE_TIMEOUT_MS, max(timeoutMs, 1).toString());
}

// Envoy's RetryPolicy for the current request. Zero values mean the core's defaults (one
// retry, 25 ms base interval, ten times that as the cap).
export class RetryPolicy {
  // Comma-separated: 5xx, gateway-error, reset, connect-failure, refused-stream,
  // retriable-4xx, retriable-status-codes.
  retryOn: string = "";
  numRetries: u32 = 0;
  perTryTimeoutMs: u32 = 0;
  retriableStatusCodes: Array<u16> = [];
  baseIntervalMs: u32 = 0;
  maxIntervalMs: u32 = 0;
}

// Retries the current request as `policy` says; stops at the first property refused.
export function setRetryPolicy(policy: RetryPolicy): WasmResultValues {
  let result = set(ROUTE_RETRY_ON, policy.retryOn);
  if (result == WasmResultValues.Ok && policy.numRetries > 0) {
    result = set(ROUTE_NUM_RETRIES, policy.numRetries.toString());
  }
  if (result == WasmResultValues.Ok && policy.perTryTimeoutMs > 0) {
    result = set(ROUTE_PER_TRY_TIMEOUT_MS, policy.perTryTimeoutMs.toString());
  }
  if (result == WasmResultValues.Ok && policy.retriableStatusCodes.length > 0) {
    let codes = new Array<string>();
    for (let i = 0; i < policy.retriableStatusCodes.length; i++) {
      codes.push(policy.retriableStatusCodes[i].toString());
    }
    result = set(ROUTE_RETRIABLE_STATUS_CODES, codes.join(","));
  }
  if (result == WasmResultValues.Ok && policy.baseIntervalMs > 0) {
    result = set(ROUTE_RETRY_BASE_INTERVAL_MS, policy.baseIntervalMs.toString());
  }
  if (result == WasmResultValues.Ok && policy.maxIntervalMs > 0) {
    result = set(ROUTE_RETRY_MAX_INTERVAL_MS, policy.maxIntervalMs.toString());
  }
  return result;
}
