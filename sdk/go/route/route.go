// Package route tells RustNg's core where the current request goes, through the
// rustng.route.* properties (docs/EXTENSIONS.md), for filters written with the upstream Go
// SDK (github.com/proxy-wasm/proxy-wasm-go-sdk). A filter using it still runs in Envoy, where
// the properties mean nothing.
//
// Call these from OnHttpRequestHeaders (or before the request leaves).
package route

import (
	"strconv"
	"strings"
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
)

// The property names, as in abi/src/extensions.rs.
const (
	Cluster              = "rustng.route.cluster"
	TimeoutMs            = "rustng.route.timeout_ms"
	RetryOn              = "rustng.route.retry_on"
	NumRetries           = "rustng.route.num_retries"
	PerTryTimeoutMs      = "rustng.route.per_try_timeout_ms"
	RetriableStatusCodes = "rustng.route.retriable_status_codes"
	RetryBaseIntervalMs  = "rustng.route.retry_base_interval_ms"
	RetryMaxIntervalMs   = "rustng.route.retry_max_interval_ms"
	HashKey              = "rustng.route.hash_key"
)

// SetHashKey sets the current request's key for consistent hashing (RING_HASH and MAGLEV
// clusters): the same key goes to the same endpoint while it is in rotation.
func SetHashKey(key string) error {
	return set(HashKey, key)
}

// SetCluster sends the current request to cluster instead of the listener's default.
func SetCluster(cluster string) error {
	return set(Cluster, cluster)
}

// SetTimeout gives the upstream timeout to start its response, for the current request only
// (with retries, for all attempts together).
func SetTimeout(timeout time.Duration) error {
	return set(TimeoutMs, millis(timeout))
}

// RetryPolicy is Envoy's RetryPolicy for the current request. Zero values mean the core's
// defaults (one retry, 25 ms base interval, ten times that as the cap).
type RetryPolicy struct {
	// RetryOn lists conditions, comma-separated: 5xx, gateway-error, reset,
	// connect-failure, refused-stream, retriable-4xx, retriable-status-codes.
	RetryOn              string
	NumRetries           uint32
	PerTryTimeout        time.Duration
	RetriableStatusCodes []uint16
	BaseInterval         time.Duration
	MaxInterval          time.Duration
}

// SetRetryPolicy retries the current request as policy says.
func SetRetryPolicy(policy RetryPolicy) error {
	if err := set(RetryOn, policy.RetryOn); err != nil {
		return err
	}
	if policy.NumRetries > 0 {
		if err := set(NumRetries, strconv.FormatUint(uint64(policy.NumRetries), 10)); err != nil {
			return err
		}
	}
	if policy.PerTryTimeout > 0 {
		if err := set(PerTryTimeoutMs, millis(policy.PerTryTimeout)); err != nil {
			return err
		}
	}
	if len(policy.RetriableStatusCodes) > 0 {
		codes := make([]string, len(policy.RetriableStatusCodes))
		for i, code := range policy.RetriableStatusCodes {
			codes[i] = strconv.Itoa(int(code))
		}
		if err := set(RetriableStatusCodes, strings.Join(codes, ",")); err != nil {
			return err
		}
	}
	if policy.BaseInterval > 0 {
		if err := set(RetryBaseIntervalMs, millis(policy.BaseInterval)); err != nil {
			return err
		}
	}
	if policy.MaxInterval > 0 {
		return set(RetryMaxIntervalMs, millis(policy.MaxInterval))
	}
	return nil
}

func set(name, value string) error {
	return proxywasm.SetProperty([]string{name}, []byte(value))
}

// millis is whole milliseconds, at least 1 (zero would mean "not set").
func millis(d time.Duration) string {
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return strconv.FormatInt(ms, 10)
}
