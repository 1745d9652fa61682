//! Durations written the way Envoy's YAML writes them (protobuf `Duration` as JSON text), so
//! every RustNg module accepts the same `timeout: 1.5s` / `fill_interval: 250ms`.

use std::time::Duration;

/// `2s`, `0.5s` (seconds, fractions allowed), `250ms`, or `5m`. `None` for anything else,
/// negative or non-finite values included; zero is accepted (callers that need a positive
/// duration check for it, since the message depends on the field).
pub fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(minutes) = text.strip_suffix('m') {
        let minutes: u64 = minutes.parse().ok()?;
        return minutes.checked_mul(60).map(Duration::from_secs);
    }
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    (0.0..1e12)
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}

/// A configuration field that must be a positive duration: `default` when absent; when
/// present but not a positive duration, `default` too and the reason added to `errors`
/// (configurations report every error at once).
pub fn positive(
    errors: &mut Vec<String>,
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Duration {
    match text {
        None => default,
        Some(text) => match parse(text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                errors.push(format!("{field}: \"{text}\" is not a positive duration"));
                default
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_durations_parse() {
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse(" 2s "), Some(Duration::from_secs(2)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
        for bad in ["", "2", "-1s", "1h", "NaNs", "infs", "1.5ms", "s"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn positive_fields_report_their_errors() {
        let mut errors = Vec::new();
        let default = Duration::from_secs(5);
        assert_eq!(positive(&mut errors, "a", None, default), default);
        assert_eq!(
            positive(&mut errors, "b", Some("2s"), default),
            Duration::from_secs(2)
        );
        assert_eq!(positive(&mut errors, "c", Some("0s"), default), default);
        assert_eq!(positive(&mut errors, "d", Some("soon"), default), default);
        assert_eq!(
            errors,
            [
                "c: \"0s\" is not a positive duration",
                "d: \"soon\" is not a positive duration"
            ]
        );
    }
}
