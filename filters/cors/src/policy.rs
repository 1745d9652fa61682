//! The CORS policy and what it says about one request: pure code, unit-tested natively.
//!
//! Field names follow Envoy's `CorsPolicy`: `allow_origin_string_match` (each `exact`,
//! `prefix` or `suffix`), `allow_methods`, `allow_headers`, `expose_headers` (comma-separated,
//! as Envoy takes them), `max_age` (seconds, as text), `allow_credentials`.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origin_string_match: Vec<StringMatch>,
    #[serde(default)]
    pub allow_methods: String,
    #[serde(default)]
    pub allow_headers: String,
    #[serde(default)]
    pub expose_headers: String,
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
}

impl StringMatch {
    fn matches(&self, value: &str) -> bool {
        self.exact.as_deref().is_none_or(|e| value == e)
            && self.prefix.as_deref().is_none_or(|p| value.starts_with(p))
            && self.suffix.as_deref().is_none_or(|s| value.ends_with(s))
    }
}

/// What the filter does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a cross-origin request, or an origin the policy does not allow: no CORS headers
    /// (the browser then refuses the response to the page).
    Ignore,
    /// An allowed preflight: answer it here (`204`) with these headers.
    Preflight(Vec<(&'static str, String)>),
    /// An allowed cross-origin request: it goes on, and the response gets these headers.
    Mark(Vec<(&'static str, String)>),
}

impl CorsPolicy {
    pub fn parse(bytes: &[u8]) -> Result<CorsPolicy, String> {
        let policy: CorsPolicy =
            serde_json::from_slice(bytes).map_err(|e| format!("cors policy: {e}"))?;
        if let Some(age) = &policy.max_age
            && age.parse::<u64>().is_err()
        {
            return Err(format!("max_age: \"{age}\" is not a number of seconds"));
        }
        for (i, m) in policy.allow_origin_string_match.iter().enumerate() {
            if m.exact.is_none() && m.prefix.is_none() && m.suffix.is_none() {
                return Err(format!(
                    "allow_origin_string_match[{i}]: needs exact, prefix or suffix"
                ));
            }
        }
        Ok(policy)
    }

    /// The verdict for a request with `origin` (the `origin` header), `method`, and, for a
    /// preflight, `access-control-request-method`.
    pub fn verdict(&self, origin: Option<&str>, method: &str, requested: Option<&str>) -> Verdict {
        let Some(origin) = origin else {
            return Verdict::Ignore;
        };
        if !self
            .allow_origin_string_match
            .iter()
            .any(|m| m.matches(origin))
        {
            return Verdict::Ignore;
        }
        let mut headers = vec![("access-control-allow-origin", origin.to_owned())];
        if self.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
        if method.eq_ignore_ascii_case("OPTIONS") && requested.is_some() {
            for (name, value) in [
                ("access-control-allow-methods", &self.allow_methods),
                ("access-control-allow-headers", &self.allow_headers),
            ] {
                if !value.is_empty() {
                    headers.push((name, value.clone()));
                }
            }
            if let Some(age) = &self.max_age {
                headers.push(("access-control-max-age", age.clone()));
            }
            return Verdict::Preflight(headers);
        }
        if !self.expose_headers.is_empty() {
            headers.push(("access-control-expose-headers", self.expose_headers.clone()));
        }
        Verdict::Mark(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy::parse(
            br#"{"allow_origin_string_match": [{"exact": "https://app.test"}, {"suffix": ".example.com"}],
                "allow_methods": "GET, POST", "allow_headers": "content-type, x-token",
                "expose_headers": "x-request-id", "max_age": "600", "allow_credentials": true}"#,
        )
        .expect("valid")
    }

    #[test]
    fn preflights_are_answered_and_requests_marked_for_allowed_origins() {
        let p = policy();
        assert_eq!(
            p.verdict(Some("https://app.test"), "OPTIONS", Some("POST")),
            Verdict::Preflight(vec![
                ("access-control-allow-origin", "https://app.test".into()),
                ("access-control-allow-credentials", "true".into()),
                ("access-control-allow-methods", "GET, POST".into()),
                (
                    "access-control-allow-headers",
                    "content-type, x-token".into()
                ),
                ("access-control-max-age", "600".into()),
            ])
        );
        assert_eq!(
            p.verdict(Some("https://eu.example.com"), "GET", None),
            Verdict::Mark(vec![
                (
                    "access-control-allow-origin",
                    "https://eu.example.com".into()
                ),
                ("access-control-allow-credentials", "true".into()),
                ("access-control-expose-headers", "x-request-id".into()),
            ])
        );
        // A plain OPTIONS (no requested method) is no preflight: it goes on, marked.
        assert!(matches!(
            p.verdict(Some("https://app.test"), "OPTIONS", None),
            Verdict::Mark(_)
        ));
    }

    #[test]
    fn other_origins_and_same_origin_requests_get_nothing() {
        let p = policy();
        assert_eq!(
            p.verdict(Some("https://evil.test"), "OPTIONS", Some("GET")),
            Verdict::Ignore
        );
        assert_eq!(
            p.verdict(Some("https://example.com.evil"), "GET", None),
            Verdict::Ignore
        );
        assert_eq!(p.verdict(None, "GET", None), Verdict::Ignore);
    }

    #[test]
    fn bad_policies_are_refused_with_the_place() {
        assert_eq!(
            CorsPolicy::parse(br#"{"max_age": "ten"}"#).err().as_deref(),
            Some("max_age: \"ten\" is not a number of seconds")
        );
        assert_eq!(
            CorsPolicy::parse(br#"{"allow_origin_string_match": [{}]}"#)
                .err()
                .as_deref(),
            Some("allow_origin_string_match[0]: needs exact, prefix or suffix")
        );
        assert!(CorsPolicy::parse(br#"{"allow_origins": []}"#).is_err());
    }
}
