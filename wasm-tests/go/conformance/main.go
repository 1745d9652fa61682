// The conformance filter written with the upstream Go SDK
// (github.com/proxy-wasm/proxy-wasm-go-sdk), built by Go itself for wasip1 (c-shared). It
// answers the same cases as the Rust filter, with the same report lines, so the differential
// tests can run it through Envoy and RustNg and compare: `/conformance/<case>` is answered
// locally with one `name=value` line per check; `/pass/body-rewrite/...` and
// `/pass/call-then-continue/...` go upstream with the stream behaviour of the Rust filter.
package main

import (
	"errors"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/rustng/rustng/sdk/go/route"
)

const upstream = "backend"

func main() {}

func init() {
	proxywasm.SetVMContext(&vm{})
}

type vm struct{ types.DefaultVMContext }

func (*vm) NewPluginContext(uint32) types.PluginContext { return &plugin{} }

type plugin struct{ types.DefaultPluginContext }

func (*plugin) NewHttpContext(uint32) types.HttpContext { return &stream{} }

type stream struct {
	types.DefaultHttpContext
	kase string
}

// statusName spells a host status the way the Rust filter's reports do.
func statusName(err error) string {
	switch {
	case err == nil:
		return "Ok"
	case errors.Is(err, types.ErrorStatusNotFound):
		return "NotFound"
	case errors.Is(err, types.ErrorStatusBadArgument):
		return "BadArgument"
	case errors.Is(err, types.ErrorStatusCasMismatch):
		return "CasMismatch"
	case errors.Is(err, types.ErrorStatusEmpty):
		return "Empty"
	default:
		return err.Error()
	}
}

type report struct{ lines []string }

func (r *report) line(name, value string) { r.lines = append(r.lines, name+"="+value) }

func (r *report) bytes(name string, value []byte, err error) {
	switch {
	case err != nil:
		r.line(name, "!"+statusName(err))
	case value == nil:
		r.line(name, "!NotFound")
	default:
		r.line(name, string(value))
	}
}

func (s *stream) OnHttpRequestHeaders(int, bool) types.Action {
	path, _ := proxywasm.GetHttpRequestHeader(":path")
	if rest, ok := strings.CutPrefix(path, "/route/"); ok {
		// RustNg's routing helpers (sdk/go): /route/<cluster>/... goes to that cluster, with
		// two retries on 5xx. Envoy ignores these properties.
		cluster, _, _ := strings.Cut(rest, "/")
		if route.SetCluster(cluster) != nil || route.SetRetryPolicy(route.RetryPolicy{RetryOn: "5xx", NumRetries: 2}) != nil {
			proxywasm.SendHttpResponse(500, nil, []byte("route properties refused"), -1)
			return types.ActionPause
		}
		return types.ActionContinue
	}
	if rest, ok := strings.CutPrefix(path, "/pass/"); ok {
		s.kase, _, _ = strings.Cut(rest, "/")
		return s.pass()
	}
	kase, ok := strings.CutPrefix(path, "/conformance/")
	if !ok {
		return types.ActionContinue
	}
	kase, _, _ = strings.Cut(kase, "?")
	s.kase = kase
	r := &report{}
	switch kase {
	case "shared-data":
		sharedData(r)
	case "metrics":
		metrics(r)
	case "properties":
		properties(r)
	case "call-status":
		if s.call("/status/201", r) {
			return types.ActionPause
		}
	default:
		r.line("unknown-case", kase)
	}
	s.answer(r)
	return types.ActionPause
}

func (s *stream) answer(r *report) {
	body := strings.Join(r.lines, "\n") + "\n"
	for _, l := range r.lines {
		proxywasm.LogInfof("conformance %s %s", s.kase, l)
	}
	_ = proxywasm.SendHttpResponse(200, [][2]string{
		{"content-type", "text/plain"}, {"x-conformance-case", s.kase},
	}, []byte(body), -1)
}

func (s *stream) pass() types.Action {
	switch s.kase {
	case "body-rewrite":
		_ = proxywasm.RemoveHttpRequestHeader("content-length")
	case "call-then-continue":
		if s.call("/status/201", nil) {
			return types.ActionPause
		}
	}
	return types.ActionContinue
}

// call dispatches a call to the backend; its answer resumes or answers the stream.
func (s *stream) call(path string, r *report) bool {
	headers := [][2]string{{":method", "GET"}, {":path", path}, {":authority", "conformance.test"}}
	_, err := proxywasm.DispatchHttpCall(upstream, headers, nil, nil, 5000, func(_, bodySize, _ int) {
		status := "none"
		if headers, err := proxywasm.GetHttpCallResponseHeaders(); err == nil {
			for _, h := range headers {
				if h[0] == ":status" {
					status = h[1]
				}
			}
		}
		body, _ := proxywasm.GetHttpCallResponseBody(0, bodySize)
		if s.kase == "call-then-continue" {
			_ = proxywasm.ReplaceHttpRequestHeader("x-call-status", status)
			_ = proxywasm.ReplaceHttpRequestHeader("x-call-body", string(body))
			_ = proxywasm.ResumeHttpRequest()
			return
		}
		answer := &report{}
		answer.line("call.status", status)
		answer.line("call.body", string(body))
		s.answer(answer)
	})
	if err != nil && r != nil {
		r.line("dispatch", statusName(err))
	}
	return err == nil
}

func (s *stream) OnHttpRequestBody(bodySize int, endOfStream bool) types.Action {
	if s.kase != "body-rewrite" {
		return types.ActionContinue
	}
	if !endOfStream {
		return types.ActionPause
	}
	body, _ := proxywasm.GetHttpRequestBody(0, bodySize)
	_ = proxywasm.ReplaceHttpRequestBody(append([]byte("rewritten:"), body...))
	return types.ActionContinue
}

func sharedData(r *report) {
	const key = "conformance.k"
	value, _, err := proxywasm.GetSharedData(key)
	r.bytes("get.missing", value, err)
	r.line("set.create", statusName(proxywasm.SetSharedData(key, []byte("v1"), 0)))
	value, cas, err := proxywasm.GetSharedData(key)
	r.bytes("get.created", value, err)
	r.line("cas.nonzero", strconv.FormatBool(cas != 0))
	r.line("set.current-cas", statusName(proxywasm.SetSharedData(key, []byte("v2"), cas)))
	r.line("set.stale-cas", statusName(proxywasm.SetSharedData(key, []byte("v3"), cas)))
	value, _, err = proxywasm.GetSharedData(key)
	r.bytes("get.after", value, err)
}

func metrics(r *report) {
	counter := proxywasm.DefineCounterMetric("conformance.go.requests")
	counter.Increment(3)
	counter.Increment(2)
	r.line("counter.get", strconv.FormatUint(counter.Value(), 10))
	gauge := proxywasm.DefineGaugeMetric("conformance.go.level")
	gauge.Add(10)
	gauge.Add(-4)
	r.line("gauge.get", strconv.FormatInt(gauge.Value(), 10))
	histogram := proxywasm.DefineHistogramMetric("conformance.go.sizes")
	histogram.Record(42)
	r.line("histogram.record", "Ok")
}

func properties(r *report) {
	for _, name := range []string{
		"plugin_name", "plugin_root_id", "request.path", "request.url_path", "request.host",
		"request.method", "request.scheme", "request.protocol", "request.query",
		"request.headers.x-probe", "no_such_property",
	} {
		value, err := proxywasm.GetProperty(strings.SplitN(name, ".", 3))
		r.bytes(name, value, err)
	}
	port, err := proxywasm.GetProperty([]string{"source", "port"})
	if err == nil {
		r.line("source.port.len", strconv.Itoa(len(port)))
	} else {
		r.line("source.port.len", statusName(err))
	}
	r.line("set", statusName(proxywasm.SetProperty([]string{"conformance_note"}, []byte("kept"))))
	value, err := proxywasm.GetProperty([]string{"conformance_note"})
	r.bytes("get.set", value, err)
}
