// The conformance filter written with the AssemblyScript SDK (@solo-io/proxy-runtime, ABI
// 0.2.0), as Envoy users build it. Same shape as the Rust and Go filters: `/conformance/<case>`
// is answered locally with `name=value` lines; `/pass/add-header/...` goes upstream with a
// request header added and a response header set. This SDK's shared-data and body helpers
// do not work against any host (they pass the wrong buffers), so its cases stay with
// headers, properties, local responses and HTTP calls.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  send_local_response, GrpcStatusValues, HeaderPair, Headers, log, LogLevelValues,
} from "@solo-io/proxy-runtime";
import { get_property, get_buffer_bytes, BufferTypeValues, WasmResultValues } from "@solo-io/proxy-runtime/runtime";
import { setCluster, setRetryPolicy, RetryPolicy } from "@rustng/sdk";

class ConformanceRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Conformance(context_id, this);
  }
}

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

class Conformance extends Context {
  kase: string = "";

  constructor(context_id: u32, root_context: ConformanceRoot) {
    super(context_id, root_context);
  }

  answer(lines: Array<string>): void {
    let body = lines.join("\n") + "\n";
    for (let i = 0; i < lines.length; i++) {
      log(LogLevelValues.info, "conformance " + this.kase + " " + lines[i]);
    }
    let headers: Headers = [pair("content-type", "text/plain"), pair("x-conformance-case", this.kase)];
    send_local_response(200, "", String.UTF8.encode(body), headers, GrpcStatusValues.Unknown);
  }

  onRequestHeaders(_headers: u32, _end_of_stream: bool): FilterHeadersStatusValues {
    let path = stream_context.headers.request.get(":path");
    if (path.startsWith("/route/")) {
      // RustNg's routing helpers (sdk/assemblyscript): /route/<cluster>/... goes to that
      // cluster, with two retries on 5xx. Envoy ignores these properties.
      let rest = path.substring(7);
      let slash = rest.indexOf("/");
      let policy = new RetryPolicy();
      policy.retryOn = "5xx";
      policy.numRetries = 2;
      if (setCluster(slash < 0 ? rest : rest.substring(0, slash)) != WasmResultValues.Ok
          || setRetryPolicy(policy) != WasmResultValues.Ok) {
        send_local_response(500, "", String.UTF8.encode("route properties refused"), [], GrpcStatusValues.Unknown);
        return FilterHeadersStatusValues.StopIteration;
      }
      return FilterHeadersStatusValues.Continue;
    }
    if (path.startsWith("/pass/add-header/")) {
      this.kase = "add-header";
      stream_context.headers.request.add("x-as-sdk", "added");
      stream_context.headers.request.remove("x-probe");
      return FilterHeadersStatusValues.Continue;
    }
    if (!path.startsWith("/conformance/")) {
      return FilterHeadersStatusValues.Continue;
    }
    this.kase = path.substring(13);
    let lines = new Array<string>();
    if (this.kase == "headers") {
      lines.push(":method=" + stream_context.headers.request.get(":method"));
      lines.push(":path=" + stream_context.headers.request.get(":path"));
      lines.push(":authority=" + stream_context.headers.request.get(":authority"));
      lines.push("x-probe=" + stream_context.headers.request.get("x-probe"));
      lines.push("x-absent=" + stream_context.headers.request.get("x-absent"));
    } else if (this.kase == "properties") {
      let names = ["plugin_name", "request\0path", "request\0method", "request\0protocol", "request\0headers\0x-probe"];
      for (let i = 0; i < names.length; i++) {
        lines.push(names[i].replaceAll("\0", ".") + "=" + String.UTF8.decode(get_property(names[i])));
      }
    } else if (this.kase == "call-status") {
      let headers: Headers = [pair(":method", "GET"), pair(":path", "/status/201"), pair(":authority", "conformance.test")];
      let result = this.root_context.httpCall("backend", headers, new ArrayBuffer(0), [], 5000, this,
        (origin: Context, _headers: u32, body_size: usize, _trailers: u32): void => {
          let self = origin as Conformance;
          let status = stream_context.headers.http_callback.get(":status");
          let body = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.HttpCallResponseBody, 0, body_size as u32));
          self.answer(["call.status=" + status, "call.body=" + body]);
        });
      if (result == 0) {
        return FilterHeadersStatusValues.StopIteration;
      }
      lines.push("dispatch=" + result.toString());
    } else {
      lines.push("unknown-case=" + this.kase);
    }
    this.answer(lines);
    return FilterHeadersStatusValues.StopIteration;
  }

  onResponseHeaders(_headers: u32, _end_of_stream: bool): FilterHeadersStatusValues {
    if (this.kase == "add-header") {
      stream_context.headers.response.replace("x-as-sdk-status", stream_context.headers.response.get(":status"));
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new ConformanceRoot(context_id); }, "");
