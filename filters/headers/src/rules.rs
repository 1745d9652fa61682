//! The header rules and their effect on a header list: pure code, unit-tested natively.
//!
//! Field names are Envoy's route-level header manipulation: `request_headers_to_add`,
//! `request_headers_to_remove`, `response_headers_to_add`, `response_headers_to_remove`, each
//! added header with Envoy's `append_action` and `keep_empty_value`, its value with Envoy's
//! substitution commands (see [`crate::format`]).

use std::borrow::Cow;

use serde::Deserialize;

use crate::format::{Phase, ValueFormat};

/// The plugin configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    #[serde(default)]
    pub append_action: AppendAction,
    /// Envoy's: a value that comes out empty is added only if this is set.
    #[serde(default)]
    pub keep_empty_value: bool,
    /// `header.value`, parsed.
    #[serde(skip)]
    pub format: ValueFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    pub value: String,
}

/// Envoy's `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppendAction {
    /// Another value beside any the message has (Envoy's default).
    #[default]
    AppendIfExistsOrAdd,
    /// Only when the message has none.
    AddIfAbsent,
    /// Replaces any the message has.
    OverwriteIfExistsOrAdd,
    /// Replaces only when the message has one.
    OverwriteIfExists,
}

impl HeaderRules {
    /// Parses and checks the rules: names are lowercase tokens, pseudo-headers are not
    /// removed (the request line is not a header to drop).
    pub fn parse(bytes: &[u8]) -> Result<HeaderRules, String> {
        let mut rules: HeaderRules = if bytes.iter().all(u8::is_ascii_whitespace) {
            HeaderRules::default()
        } else {
            serde_json::from_slice(bytes).map_err(|e| format!("header rules: {e}"))?
        };
        let lists = [
            (
                "request_headers_to_add",
                Phase::Request,
                &mut rules.request_headers_to_add,
            ),
            (
                "response_headers_to_add",
                Phase::Response,
                &mut rules.response_headers_to_add,
            ),
        ];
        for (field, phase, list) in lists {
            for (i, option) in list.iter_mut().enumerate() {
                option.header.key = checked_name(&option.header.key)
                    .map_err(|e| format!("{field}[{i}].header.key: {e}"))?;
                if option
                    .header
                    .value
                    .bytes()
                    .any(|b| b == b'\r' || b == b'\n' || b == 0)
                {
                    return Err(format!("{field}[{i}].header.value: control characters"));
                }
                option.format = ValueFormat::parse(&option.header.value, phase)
                    .map_err(|e| format!("{field}[{i}].header.value: {e}"))?;
            }
        }
        let lists = [
            (
                "request_headers_to_remove",
                &mut rules.request_headers_to_remove,
            ),
            (
                "response_headers_to_remove",
                &mut rules.response_headers_to_remove,
            ),
        ];
        for (field, list) in lists {
            for (i, name) in list.iter_mut().enumerate() {
                *name = checked_name(name).map_err(|e| format!("{field}[{i}]: {e}"))?;
                if name.starts_with(':') {
                    return Err(format!("{field}[{i}]: pseudo-headers cannot be removed"));
                }
            }
        }
        Ok(rules)
    }
}

fn checked_name(name: &str) -> Result<String, String> {
    let body = name.strip_prefix(':').unwrap_or(name);
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if body.is_empty() || !body.bytes().all(token) {
        return Err(format!("\"{name}\" is not a header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// What to do to one header list, as calls the filter makes through the ABI.
#[derive(Debug, PartialEq, Eq)]
pub enum Edit<'a> {
    Remove(&'a str),
    Set(&'a str, Cow<'a, str>),
    Add(&'a str, Cow<'a, str>),
}

/// The edits `add` and `remove` make to a message, given whether it has each header and
/// what each value comes out as. Removals come first, so a rule can replace a header the
/// same config removes.
pub fn edits<'a>(
    add: &'a [HeaderValueOption],
    remove: &'a [String],
    has: impl Fn(&str) -> bool,
    value: impl Fn(&'a ValueFormat) -> Cow<'a, str>,
) -> Vec<Edit<'a>> {
    // Sized once: growing it would reallocate on every request.
    let mut edits: Vec<Edit<'a>> = Vec::with_capacity(remove.len() + add.len());
    edits.extend(remove.iter().map(|n| Edit::Remove(n)));
    let removed = |name: &str| remove.iter().any(|r| r == name);
    for option in add {
        let key = option.header.key.as_str();
        let value = value(&option.format);
        if value.is_empty() && !option.keep_empty_value {
            continue;
        }
        // Asked only by the actions that depend on it: each answer is a call into the host.
        let present = || !removed(key) && has(key);
        let edit = match option.append_action {
            AppendAction::AppendIfExistsOrAdd => Some(Edit::Add(key, value)),
            AppendAction::AddIfAbsent => (!present()).then_some(Edit::Add(key, value)),
            AppendAction::OverwriteIfExistsOrAdd => Some(Edit::Set(key, value)),
            AppendAction::OverwriteIfExists => present().then_some(Edit::Set(key, value)),
        };
        edits.extend(edit);
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"{
      "request_headers_to_add": [
        {"header": {"key": "X-Env", "value": "prod"}},
        {"header": {"key": "x-once", "value": "1"}, "append_action": "ADD_IF_ABSENT"},
        {"header": {"key": "x-set", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-only", "value": "3"}, "append_action": "OVERWRITE_IF_EXISTS"}
      ],
      "request_headers_to_remove": ["X-Secret"]
    }"#;

    #[test]
    fn each_append_action_as_envoy_defines_it() {
        let rules = HeaderRules::parse(RULES.as_bytes()).expect("valid");
        fn text(format: &ValueFormat) -> Cow<'_, str> {
            format.render(|_| None)
        }
        let asked = std::cell::RefCell::new(Vec::new());
        let none = edits(
            &rules.request_headers_to_add,
            &rules.request_headers_to_remove,
            |name| {
                asked.borrow_mut().push(name.to_owned());
                false
            },
            text,
        );
        // Only the actions that depend on the header's presence ask for it.
        assert_eq!(asked.into_inner(), ["x-once", "x-only"]);
        assert_eq!(
            none,
            [
                Edit::Remove("x-secret"),
                Edit::Add("x-env", "prod".into()),
                Edit::Add("x-once", "1".into()),
                Edit::Set("x-set", "2".into()),
            ]
        );
        let all = edits(
            &rules.request_headers_to_add,
            &rules.request_headers_to_remove,
            |_| true,
            text,
        );
        assert_eq!(
            all,
            [
                Edit::Remove("x-secret"),
                Edit::Add("x-env", "prod".into()),
                Edit::Set("x-set", "2".into()),
                Edit::Set("x-only", "3".into()),
            ]
        );
    }

    #[test]
    fn values_that_come_out_empty_are_dropped_unless_kept() {
        let rules = HeaderRules::parse(
            br#"{"request_headers_to_add": [
                {"header": {"key": "x-user", "value": "%REQ(x-missing)%"}},
                {"header": {"key": "x-kept", "value": "%REQ(x-missing)%"}, "keep_empty_value": true},
                {"header": {"key": "x-method", "value": "m=%REQ(:method)%"}}
            ]}"#,
        )
        .expect("valid");
        let planned = edits(
            &rules.request_headers_to_add,
            &[],
            |_| false,
            |format| {
                format.render(|command| match command {
                    crate::format::Command::RequestHeader(h) if h.name == ":method" => Some("GET"),
                    _ => None,
                })
            },
        );
        assert_eq!(
            planned,
            [
                Edit::Add("x-kept", "".into()),
                Edit::Add("x-method", "m=GET".into())
            ]
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_place() {
        for (text, expected) in [
            (
                r#"{"request_headers_to_add": [{"header": {"key": "bad name", "value": "x"}}]}"#,
                "request_headers_to_add[0].header.key: \"bad name\" is not a header name",
            ),
            (
                r#"{"response_headers_to_add": [{"header": {"key": "x", "value": "a\r\nb"}}]}"#,
                "response_headers_to_add[0].header.value: control characters",
            ),
            (
                r#"{"response_headers_to_add": [{"header": {"key": "x", "value": "%FOO%"}}]}"#,
                "response_headers_to_add[0].header.value: unknown command %FOO%",
            ),
            (
                r#"{"request_headers_to_remove": [":path"]}"#,
                "request_headers_to_remove[0]: pseudo-headers cannot be removed",
            ),
        ] {
            assert_eq!(
                HeaderRules::parse(text.as_bytes()).err().as_deref(),
                Some(expected)
            );
        }
        assert!(HeaderRules::parse(br#"{"request_headers_to_add": [{"header": {"key": "x", "value": "y"}, "append_action": "SOMETIMES"}]}"#).is_err());
        assert!(HeaderRules::parse(b"").is_ok());
    }
}
