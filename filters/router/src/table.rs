//! The route table and the decision for one request: pure code, no hostcalls, so every rule
//! is a unit test.
//!
//! The configuration follows Envoy's `RouteConfiguration` (a subset of it, same field names):
//! virtual hosts chosen by `:authority`, then the first route whose match holds.

use std::time::Duration;

use serde::Deserialize;

/// The plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    #[serde(default)]
    pub name: String,
    /// `example.com`, `*.example.com` (any subdomain), `*` (any host). Ports are ignored.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// For routes without their own.
    pub retry_policy: Option<RetryPolicyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Envoy's route name: reported as `rustng.route.name` (traces show it).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub route: Option<RouteAction>,
    pub redirect: Option<Redirect>,
    pub direct_response: Option<DirectResponse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    pub prefix: Option<String>,
    pub path: Option<String>,
    /// The whole path (without the query) matches this regular expression.
    pub safe_regex: Option<Pattern>,
    /// Every one must hold. `:method` matches the method.
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub query_parameters: Vec<HeaderMatcher>,
}

/// A header (or query parameter) condition: `exact`, `prefix`, or `present`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    pub cluster: Option<String>,
    pub weighted_clusters: Option<WeightedClusters>,
    /// Replaces the matched `prefix` (or the whole matched `path`).
    pub prefix_rewrite: Option<String>,
    /// Replaces every match of `pattern` in the path with `substitution` (`\1` names a group).
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite_literal: Option<String>,
    /// How long the upstream may take to start its response (`2s`, `0.5s`, `250ms`), instead
    /// of the cluster's `timeout`.
    pub timeout: Option<String>,
    pub retry_policy: Option<RetryPolicyConfig>,
    /// Where the hash key for `RING_HASH` / `MAGLEV` clusters comes from: the first policy
    /// that yields a value.
    #[serde(default)]
    pub hash_policy: Vec<HashPolicy>,
    /// The retry policy (the route's, else its virtual host's) as the properties the core
    /// reads, rendered once when the table is read.
    #[serde(skip)]
    pub retry_properties: Vec<(&'static str, String)>,
}

/// Envoy's `RouteAction.HashPolicy`: one of `header`, `cookie`, `connection_properties`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    pub header: Option<HeaderHash>,
    pub cookie: Option<CookieHash>,
    pub connection_properties: Option<ConnectionProperties>,
    /// Accepted for Envoy's shape; the first policy with a value is the key either way.
    pub terminal: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderHash {
    pub header_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieHash {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionProperties {
    #[serde(default)]
    pub source_ip: bool,
}

/// Envoy's `RetryPolicy` fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyConfig {
    pub retry_on: String,
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    pub retry_back_off: Option<RetryBackOff>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    pub base_interval: String,
    pub max_interval: Option<String>,
}

/// The conditions the core retries on (Envoy's names).
const RETRY_ON: [&str; 7] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
];

impl RetryPolicyConfig {
    /// The checked policy; `at` names the field in errors.
    fn compile(&self, at: &str) -> Result<rustng_guest::route::RetryPolicy, String> {
        for condition in self.retry_on.split(',').map(str::trim) {
            if !RETRY_ON.contains(&condition) {
                return Err(format!(
                    "{at}.retry_on: \"{condition}\" is not one of {}",
                    RETRY_ON.join(", ")
                ));
            }
        }
        let duration = |text: &Option<String>, field: &str| match text {
            None => Ok(None),
            Some(text) => parse_duration(text).map(Some).ok_or_else(|| {
                format!("{at}.{field}: \"{text}\" is not a duration like 2s or 250ms")
            }),
        };
        let back_off = self.retry_back_off.as_ref();
        Ok(rustng_guest::route::RetryPolicy {
            retry_on: self.retry_on.clone(),
            num_retries: self.num_retries,
            per_try_timeout: duration(&self.per_try_timeout, "per_try_timeout")?,
            retriable_status_codes: self.retriable_status_codes.clone(),
            base_interval: duration(
                &back_off.map(|b| b.base_interval.clone()),
                "retry_back_off.base_interval",
            )?,
            max_interval: duration(
                &back_off.and_then(|b| b.max_interval.clone()),
                "retry_back_off.max_interval",
            )?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: UnanchoredPattern,
    pub substitution: String,
}

/// Envoy's `{regex: "..."}` matcher, compiled when the table is read, matching whole values.
#[derive(Debug)]
pub struct Pattern(regex_lite::Regex);

/// The same, matching anywhere (for rewrites).
#[derive(Debug)]
pub struct UnanchoredPattern(regex_lite::Regex);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    regex: String,
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawPattern::deserialize(d)?;
        regex_lite::Regex::new(&format!("^(?:{})$", raw.regex))
            .map(Pattern)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for UnanchoredPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawPattern::deserialize(d)?;
        regex_lite::Regex::new(&raw.regex)
            .map(UnanchoredPattern)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusters {
    pub clusters: Vec<ClusterWeight>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeight {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub host_redirect: Option<String>,
    pub path_redirect: Option<String>,
    #[serde(default)]
    pub https_redirect: bool,
    /// 301 (default), 302, 303, 307 or 308.
    pub response_code: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<DataSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub inline_string: String,
}

/// What the router decided for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Send to `cluster`, with the path and authority rewritten when set.
    Forward {
        cluster: &'a str,
        path: Option<String>,
        authority: Option<String>,
        timeout: Option<Duration>,
        /// `rustng.route.*` retry properties, empty without a retry policy.
        retry: &'a [(&'static str, String)],
        /// The consistent-hashing key, when the route has a hash policy that yields one.
        hash_key: Option<String>,
        /// The route's name, if it has one.
        route_name: Option<&'a str>,
    },
    /// Answer with a redirect to `location`.
    Redirect { status: u16, location: String },
    /// Answer with `status` and `body`.
    Direct { status: u16, body: String },
    /// No virtual host or route matched: 404, as Envoy answers.
    NotFound,
}

/// The parts of a request routing looks at.
pub struct RequestView<'a> {
    /// `:authority`, port included if the client sent one.
    pub authority: &'a str,
    /// `:path` with its query.
    pub path: &'a str,
    /// A request header by lowercase name (`:method` included).
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// The client's IP address.
    pub source_ip: &'a dyn Fn() -> Option<String>,
}

impl RouteConfiguration {
    /// Parses and checks the table: every route has exactly one action, a match with a path
    /// condition, and weights that add up to more than zero.
    pub fn parse(bytes: &[u8]) -> Result<RouteConfiguration, String> {
        let mut table: RouteConfiguration =
            serde_json::from_slice(bytes).map_err(|e| format!("route configuration: {e}"))?;
        for host in &mut table.virtual_hosts {
            // Matching compares lowercase text without converting per request.
            for domain in &mut host.domains {
                domain.make_ascii_lowercase();
            }
            for route in &mut host.routes {
                for matcher in &mut route.matcher.headers {
                    matcher.name.make_ascii_lowercase();
                }
                for policy in route
                    .route
                    .iter_mut()
                    .flat_map(|a| a.hash_policy.iter_mut())
                {
                    if let Some(header) = &mut policy.header {
                        header.header_name.make_ascii_lowercase();
                    }
                }
            }
            let host_retries = match &host.retry_policy {
                Some(policy) => {
                    Some(policy.compile(&format!("virtual_hosts[{}].retry_policy", host.name))?)
                }
                None => None,
            };
            for (i, route) in host.routes.iter_mut().enumerate() {
                let at = format!("virtual_hosts[{}].routes[{i}]", host.name);
                let actions = usize::from(route.route.is_some())
                    + usize::from(route.redirect.is_some())
                    + usize::from(route.direct_response.is_some());
                if actions != 1 {
                    return Err(format!(
                        "{at}: needs exactly one of route, redirect, direct_response"
                    ));
                }
                let conditions = usize::from(route.matcher.prefix.is_some())
                    + usize::from(route.matcher.path.is_some())
                    + usize::from(route.matcher.safe_regex.is_some());
                if conditions != 1 {
                    return Err(format!(
                        "{at}.match: needs exactly one of prefix, path, safe_regex"
                    ));
                }
                if let Some(action) = &route.route {
                    let weighted = action.weighted_clusters.as_ref();
                    if action.cluster.is_some() == weighted.is_some() {
                        return Err(format!(
                            "{at}.route: needs exactly one of cluster, weighted_clusters"
                        ));
                    }
                    if let Some(text) = &action.timeout
                        && parse_duration(text).is_none()
                    {
                        return Err(format!(
                            "{at}.route.timeout: \"{text}\" is not a duration like 2s or 250ms"
                        ));
                    }
                    if weighted
                        .is_some_and(|w| w.clusters.iter().map(|c| c.weight).sum::<u32>() == 0)
                    {
                        return Err(format!("{at}.route.weighted_clusters: weights add up to 0"));
                    }
                    for (p, policy) in action.hash_policy.iter().enumerate() {
                        let kinds = usize::from(policy.header.is_some())
                            + usize::from(policy.cookie.is_some())
                            + usize::from(policy.connection_properties.is_some());
                        if kinds != 1 {
                            return Err(format!(
                                "{at}.route.hash_policy[{p}]: needs exactly one of header, cookie, connection_properties"
                            ));
                        }
                    }
                }
                if let Some(action) = &mut route.route {
                    let retries = match &action.retry_policy {
                        Some(policy) => Some(policy.compile(&format!("{at}.route.retry_policy"))?),
                        None => host_retries.clone(),
                    };
                    action.retry_properties = retries.map(|r| r.properties()).unwrap_or_default();
                }
            }
        }
        Ok(table)
    }

    /// The decision for `request`; `random` picks among weighted clusters.
    /// Whether a decision can depend on `:authority`: a domain other than `*`, or a redirect
    /// that keeps the request's host. When not, the filter does not read it (one hostcall
    /// less per request).
    pub fn reads_authority(&self) -> bool {
        self.virtual_hosts.iter().any(|host| {
            host.domains.iter().any(|domain| domain != "*")
                || host.routes.iter().any(|r| {
                    r.redirect
                        .as_ref()
                        .is_some_and(|r| r.host_redirect.is_none())
                })
        })
    }

    pub fn decide(&self, request: &RequestView<'_>, random: u32) -> Decision<'_> {
        let host = strip_port(request.authority);
        // Clients almost always send lowercase hosts: allocate only when one does not.
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        };
        let Some(virtual_host) = self.virtual_host(&host) else {
            return Decision::NotFound;
        };
        let (path, query) = request.path.split_once('?').unwrap_or((request.path, ""));
        let Some(route) = virtual_host
            .routes
            .iter()
            .find(|r| r.matcher.matches(path, query, request.header))
        else {
            return Decision::NotFound;
        };
        if let Some(direct) = &route.direct_response {
            return Decision::Direct {
                status: direct.status,
                body: direct
                    .body
                    .as_ref()
                    .map(|b| b.inline_string.clone())
                    .unwrap_or_default(),
            };
        }
        if let Some(redirect) = &route.redirect {
            // Only redirects need the scheme: fetched here, not for every request.
            let scheme = if redirect.https_redirect {
                "https".to_owned()
            } else {
                (request.header)(":scheme").unwrap_or_else(|| "http".to_owned())
            };
            let host = redirect
                .host_redirect
                .as_deref()
                .unwrap_or(request.authority);
            let path = redirect.path_redirect.as_deref().unwrap_or(request.path);
            return Decision::Redirect {
                status: redirect.response_code.unwrap_or(301),
                location: format!("{scheme}://{host}{path}"),
            };
        }
        let Some(action) = &route.route else {
            return Decision::NotFound;
        };
        let cluster = match (&action.cluster, &action.weighted_clusters) {
            (Some(cluster), _) => cluster.as_str(),
            (None, Some(weighted)) => pick(&weighted.clusters, random),
            (None, None) => return Decision::NotFound,
        };
        let path = rewritten_path(route, action, request.path);
        Decision::Forward {
            cluster,
            path,
            authority: action.host_rewrite_literal.clone(),
            timeout: action.timeout.as_deref().and_then(parse_duration),
            retry: &action.retry_properties,
            hash_key: action
                .hash_policy
                .iter()
                .find_map(|policy| hash_key(policy, request)),
            route_name: route.name.as_deref(),
        }
    }

    fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        // Envoy's order of preference: exact, then the longest `*.suffix`, then `*`.
        let domains = || {
            self.virtual_hosts
                .iter()
                .flat_map(|v| v.domains.iter().map(move |d| (v, d)))
        };
        // Domains are lowercase since `parse`.
        if let Some((v, _)) = domains().find(|(_, d)| *d == host) {
            return Some(v);
        }
        let suffix = domains()
            .filter_map(|(v, d)| {
                let suffix = d.strip_prefix('*')?;
                (!suffix.is_empty() && host.len() > suffix.len() && host.ends_with(suffix))
                    .then_some((v, suffix.len()))
            })
            .max_by_key(|(_, len)| *len);
        if let Some((v, _)) = suffix {
            return Some(v);
        }
        domains().find(|(_, d)| *d == "*").map(|(v, _)| v)
    }
}

/// The path after the route's `prefix_rewrite` or `regex_rewrite`, if it has one; the query
/// is kept as it is.
fn rewritten_path(route: &Route, action: &RouteAction, full: &str) -> Option<String> {
    let (path, query) = match full.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (full, None),
    };
    let rewritten = if let Some(rewrite) = &action.prefix_rewrite {
        // A regex match covers the whole path, so its rewrite replaces all of it.
        let matched = route
            .matcher
            .prefix
            .as_deref()
            .or(route.matcher.path.as_deref())
            .map_or(path.len(), str::len);
        let rest = &path[matched.min(path.len())..];
        let mut rewritten =
            String::with_capacity(rewrite.len() + rest.len() + full.len() - path.len());
        rewritten.push_str(rewrite);
        rewritten.push_str(rest);
        rewritten
    } else if let Some(rewrite) = &action.regex_rewrite {
        let substitution = envoy_substitution(&rewrite.substitution);
        rewrite
            .pattern
            .0
            .replace_all(path, substitution.as_str())
            .into_owned()
    } else {
        return None;
    };
    let mut rewritten = rewritten;
    if let Some(query) = query {
        rewritten.push('?');
        rewritten.push_str(query);
    }
    Some(rewritten)
}

/// Envoy's (RE2's) `\1` group references in the syntax of `regex_lite` (`${1}`).
fn envoy_substitution(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

impl RouteMatch {
    fn matches(&self, path: &str, query: &str, header: &dyn Fn(&str) -> Option<String>) -> bool {
        let path_holds = match (&self.prefix, &self.path, &self.safe_regex) {
            (Some(prefix), _, _) => path.starts_with(prefix.as_str()),
            (_, Some(exact), _) => path == exact,
            (_, _, Some(pattern)) => pattern.0.is_match(path),
            (None, None, None) => false,
        };
        path_holds
            && self
                .headers
                .iter()
                .all(|m| m.holds(header(&m.name).as_deref()))
            && self
                .query_parameters
                .iter()
                .all(|m| m.holds(query_parameter(query, &m.name).as_deref()))
    }
}

impl HeaderMatcher {
    fn holds(&self, value: Option<&str>) -> bool {
        match value {
            None => self.present == Some(false),
            Some(value) => {
                self.present != Some(false)
                    && self.exact.as_deref().is_none_or(|e| value == e)
                    && self.prefix.as_deref().is_none_or(|p| value.starts_with(p))
            }
        }
    }
}

fn query_parameter(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// A positive duration in Envoy's text (`2s`, `0.5s`, `250ms`).
fn parse_duration(text: &str) -> Option<Duration> {
    rustng_guest::duration::parse(text).filter(|duration| !duration.is_zero())
}

fn strip_port(authority: &str) -> &str {
    // `[v6]:port`, `host:port`, or no port.
    if let Some(end) = authority.find(']') {
        return &authority[..=end];
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

fn pick(clusters: &[ClusterWeight], random: u32) -> &str {
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    let mut point = u64::from(random) % total.max(1);
    for cluster in clusters {
        if point < u64::from(cluster.weight) {
            return &cluster.name;
        }
        point -= u64::from(cluster.weight);
    }
    clusters.last().map_or("", |c| c.name.as_str())
}

/// The key one hash policy yields for `request`, if any.
fn hash_key(policy: &HashPolicy, request: &RequestView<'_>) -> Option<String> {
    if let Some(header) = &policy.header {
        return (request.header)(&header.header_name);
    }
    if let Some(cookie) = &policy.cookie {
        let cookies = (request.header)("cookie")?;
        return cookies.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == cookie.name).then(|| value.to_owned())
        });
    }
    if policy
        .connection_properties
        .as_ref()
        .is_some_and(|c| c.source_ip)
    {
        return (request.source_ip)();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"{"virtual_hosts": [
      {"name": "api", "domains": ["api.example.com", "*.api.example.com"], "routes": [
        {"name": "v1-reads", "match": {"prefix": "/v1/", "headers": [{"name": ":method", "exact": "GET"}]},
         "route": {"cluster": "v1", "prefix_rewrite": "/", "host_rewrite_literal": "v1.internal", "timeout": "1.5s"}},
        {"match": {"prefix": "/", "query_parameters": [{"name": "canary", "exact": "1"}]},
         "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "api"}}
      ]},
      {"name": "any", "domains": ["*"], "routes": [
        {"match": {"path": "/old"}, "redirect": {"path_redirect": "/new", "response_code": 308}},
        {"match": {"prefix": "/health"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
        {"match": {"prefix": "/app", "headers": [{"name": "x-beta", "present": true}]}, "route": {"cluster": "beta"}},
        {"match": {"safe_regex": {"regex": "/service/[^/]+/.*"}},
         "route": {"cluster": "svc", "regex_rewrite": {"pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"}}}
      ]}
    ]}"#;

    static PARSED: std::sync::LazyLock<RouteConfiguration> = std::sync::LazyLock::new(|| {
        RouteConfiguration::parse(TABLE.as_bytes()).expect("valid table")
    });

    fn decide(
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        random: u32,
    ) -> Decision<'static> {
        decide_at(&PARSED, authority, path, headers, random)
    }

    fn decide_in<'t>(
        table: &'t RouteConfiguration,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Decision<'t> {
        decide_at(table, "x", path, headers, 0)
    }

    fn decide_at<'t>(
        table: &'t RouteConfiguration,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        random: u32,
    ) -> Decision<'t> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        table.decide(
            &RequestView {
                authority,
                path,
                header: &lookup,
                source_ip: &|| Some("192.0.2.7".to_owned()),
            },
            random,
        )
    }

    fn forward(cluster: &str) -> Decision<'_> {
        Decision::Forward {
            cluster,
            path: None,
            authority: None,
            timeout: None,
            retry: &[],
            hash_key: None,
            route_name: None,
        }
    }

    #[test]
    fn the_authority_is_read_only_when_a_decision_needs_it() {
        let any_host = |routes: &str| {
            let json =
                format!(r#"{{"virtual_hosts": [{{"domains": ["*"], "routes": [{routes}]}}]}}"#);
            RouteConfiguration::parse(json.as_bytes()).expect("valid")
        };
        assert!(
            !any_host(r#"{"match": {"prefix": "/"}, "route": {"cluster": "a"}}"#).reads_authority()
        );
        assert!(
            any_host(r#"{"match": {"prefix": "/"}, "redirect": {"path_redirect": "/x"}}"#)
                .reads_authority()
        );
        assert!(
            !any_host(r#"{"match": {"prefix": "/"}, "redirect": {"host_redirect": "h"}}"#)
                .reads_authority()
        );
        assert!(PARSED.reads_authority());
    }

    #[test]
    fn hosts_paths_methods_and_rewrites() {
        assert_eq!(
            decide(
                "api.example.com:8080",
                "/v1/users?x=1",
                &[(":method", "GET")],
                0
            ),
            Decision::Forward {
                cluster: "v1",
                path: Some("/users?x=1".into()),
                authority: Some("v1.internal".into()),
                timeout: Some(Duration::from_millis(1500)),
                retry: &[],
                hash_key: None,
                route_name: Some("v1-reads"),
            }
        );
        // Another method falls through to the catch-all of the same host.
        assert_eq!(
            decide("API.example.com", "/v1/users", &[(":method", "POST")], 0),
            forward("api")
        );
        assert_eq!(decide("eu.api.example.com", "/x", &[], 0), forward("api"));
    }

    #[test]
    fn weighted_clusters_split_by_weight() {
        let picks: Vec<Decision> = (0..4)
            .map(|r| decide("api.example.com", "/?canary=1", &[], r))
            .collect();
        assert_eq!(
            picks,
            [forward("a"), forward("b"), forward("b"), forward("b")]
        );
    }

    #[test]
    fn redirects_direct_responses_and_no_match() {
        assert_eq!(
            decide("other.test", "/old", &[], 0),
            Decision::Redirect {
                status: 308,
                location: "http://other.test/new".into()
            }
        );
        assert_eq!(
            decide("other.test", "/health/live", &[], 0),
            Decision::Direct {
                status: 200,
                body: "ok".into()
            }
        );
        assert_eq!(
            decide("other.test", "/app", &[("x-beta", "1")], 0),
            forward("beta")
        );
        assert_eq!(decide("other.test", "/app", &[], 0), Decision::NotFound);
        assert_eq!(decide("other.test", "/nothing", &[], 0), Decision::NotFound);
    }

    #[test]
    fn regex_matches_and_rewrites() {
        assert_eq!(
            decide("other.test", "/service/users/list?all=1", &[], 0),
            Decision::Forward {
                cluster: "svc",
                path: Some("/list/instance/users?all=1".into()),
                authority: None,
                timeout: None,
                retry: &[],
                hash_key: None,
                route_name: None,
            }
        );
        // The whole path must match: no partial matches.
        assert_eq!(
            decide("other.test", "/x/service/users/list", &[], 0),
            Decision::NotFound
        );
        assert_eq!(envoy_substitution(r"\2-\1 costs $5"), "${2}-${1} costs $$5");
    }

    #[test]
    fn bad_tables_are_refused_with_the_place() {
        for (table, expected) in [
            (
                r#"{"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {"prefix": "/"}}]}]}"#,
                "virtual_hosts[a].routes[0]: needs exactly one of route, redirect, direct_response",
            ),
            (
                r#"{"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {}, "route": {"cluster": "x"}}]}]}"#,
                "virtual_hosts[a].routes[0].match: needs exactly one of prefix, path, safe_regex",
            ),
            (
                r#"{"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "x", "weight": 0}]}}}]}]}"#,
                "virtual_hosts[a].routes[0].route.weighted_clusters: weights add up to 0",
            ),
        ] {
            assert_eq!(
                RouteConfiguration::parse(table.as_bytes()).err().as_deref(),
                Some(expected)
            );
        }
        let bad_timeout = RouteConfiguration::parse(
            br#"{"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "x", "timeout": "soon"}}]}]}"#,
        );
        assert_eq!(
            bad_timeout.err().as_deref(),
            Some(
                "virtual_hosts[a].routes[0].route.timeout: \"soon\" is not a duration like 2s or 250ms"
            )
        );
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), None);
        let bad_regex = RouteConfiguration::parse(
            br#"{"virtual_hosts": [{"domains": ["*"], "routes": [{"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "x"}}]}]}"#,
        );
        assert!(bad_regex.is_err_and(|e| e.starts_with("route configuration: ")));
        let unknown = RouteConfiguration::parse(br#"{"virtual_hosts": [], "extra": 1}"#);
        assert!(unknown.is_err_and(|e| e.contains("unknown field")));
    }

    #[test]
    fn retry_policies_become_route_properties() {
        let table = RouteConfiguration::parse(
            br#"{"virtual_hosts": [{"name": "v", "domains": ["*"],
              "retry_policy": {"retry_on": "connect-failure"},
              "routes": [
                {"match": {"prefix": "/own"}, "route": {"cluster": "a", "retry_policy": {
                  "retry_on": "5xx,retriable-status-codes", "num_retries": 3, "per_try_timeout": "0.25s",
                  "retriable_status_codes": [429], "retry_back_off": {"base_interval": "10ms", "max_interval": "1s"}}}},
                {"match": {"prefix": "/"}, "route": {"cluster": "b"}}
              ]}]}"#,
        )
        .expect("table");
        let props = |path: &str| {
            let view = RequestView {
                authority: "x",
                path,
                header: &|_| None,
                source_ip: &|| None,
            };
            match table.decide(&view, 0) {
                Decision::Forward { retry, .. } => retry.to_vec(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            props("/own"),
            vec![
                (
                    "rustng.route.retry_on",
                    "5xx,retriable-status-codes".to_owned()
                ),
                ("rustng.route.num_retries", "3".to_owned()),
                ("rustng.route.per_try_timeout_ms", "250".to_owned()),
                ("rustng.route.retriable_status_codes", "429".to_owned()),
                ("rustng.route.retry_base_interval_ms", "10".to_owned()),
                ("rustng.route.retry_max_interval_ms", "1000".to_owned()),
            ]
        );
        // The virtual host's policy for routes without their own.
        assert_eq!(
            props("/else"),
            vec![("rustng.route.retry_on", "connect-failure".to_owned())]
        );
        let bad = RouteConfiguration::parse(
            br#"{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "a", "retry_policy": {"retry_on": "5xx,sometimes"}}}]}]}"#,
        )
        .expect_err("unknown condition");
        assert!(
            bad.contains("virtual_hosts[v].routes[0].route.retry_policy.retry_on: \"sometimes\""),
            "{bad}"
        );
    }

    #[test]
    fn hash_policies_yield_the_first_key_there_is() {
        let table = RouteConfiguration::parse(
            br#"{"virtual_hosts": [{"domains": ["*"], "routes": [
                {"match": {"prefix": "/ip"}, "route": {"cluster": "a",
                  "hash_policy": [{"connection_properties": {"source_ip": true}}]}},
                {"match": {"prefix": "/"}, "route": {"cluster": "a", "hash_policy": [
                  {"header": {"header_name": "X-User"}},
                  {"cookie": {"name": "session"}, "terminal": true}]}}
              ]}]}"#,
        )
        .expect("table");
        let key = |path: &str, headers: &[(&str, &str)]| match decide_in(&table, path, headers) {
            Decision::Forward { hash_key, .. } => hash_key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key("/", &[("x-user", "ann")]), Some("ann".into()));
        assert_eq!(
            key("/", &[("cookie", "a=1; session=s3; b=2")]),
            Some("s3".into())
        );
        assert_eq!(key("/", &[]), None);
        assert_eq!(key("/ip", &[]), Some("192.0.2.7".into()));
        assert!(
            RouteConfiguration::parse(
                br#"{"virtual_hosts": [{"domains": ["*"], "routes": [{"match": {"prefix": "/"},
                  "route": {"cluster": "a", "hash_policy": [{}]}}]}]}"#
            )
            .err()
            .is_some_and(|e| e.contains("hash_policy[0]: needs exactly one of"))
        );
    }
}
