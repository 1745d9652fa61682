//! The settings every [`Follower`](super::Follower) has, whatever the registry: the RustNg
//! cluster that reaches it, how long one call may wait there, and the pause after a failure.
//! Each adapter's own serde struct carries them (serde cannot flatten a struct that denies
//! unknown fields), and hands their raw text to [`FollowSettings::check`].

use std::time::Duration;

use crate::duration;

/// Checked settings of a follower.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowSettings {
    /// The RustNg cluster that reaches the registry; also the calls' `:authority`.
    pub cluster: String,
    /// How long one call may wait at the registry for a change (Consul's `wait`, a watch's
    /// `timeoutSeconds`). Default and limits: the adapter's [`Window`].
    pub window: Duration,
    /// How long to wait before calling again after a failed call. Default 1 s.
    pub retry_interval: Duration,
}

/// How an adapter names and bounds its [`FollowSettings::window`].
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The field's name in the adapter's settings, for errors: `wait`, `watch_window`.
    pub field: &'static str,
    /// When the field is absent.
    pub default: Duration,
    /// The error for a window the registry would refuse or misread, if it is one.
    pub limit: fn(Duration) -> Option<&'static str>,
}

impl FollowSettings {
    /// Checks the raw fields, adding each error to `errors` (configurations report every error
    /// at once); a bad duration falls back to its default so checking can go on.
    pub fn check(
        errors: &mut Vec<String>,
        window: &Window,
        cluster: String,
        window_text: Option<&str>,
        retry_interval: Option<&str>,
    ) -> FollowSettings {
        let window_length = duration::positive(errors, window.field, window_text, window.default);
        let retry_interval = duration::positive(
            errors,
            "retry_interval",
            retry_interval,
            Duration::from_secs(1),
        );
        let settings = FollowSettings {
            cluster,
            window: window_length,
            retry_interval,
        };
        if let Some(error) = (window.limit)(settings.window) {
            errors.push(error.to_owned());
        }
        if settings.cluster.is_empty() {
            errors.push("cluster: empty".to_owned());
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Window = Window {
        field: "wait",
        default: Duration::from_secs(30),
        limit: |wait| (wait > Duration::from_secs(60)).then_some("wait: at most 1m"),
    };

    #[test]
    fn defaults_apply_and_errors_are_listed_in_order() {
        let mut errors = Vec::new();
        let settings = FollowSettings::check(&mut errors, &WAIT, "registry".into(), None, None);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            settings,
            FollowSettings {
                cluster: "registry".into(),
                window: Duration::from_secs(30),
                retry_interval: Duration::from_secs(1),
            }
        );

        let settings =
            FollowSettings::check(&mut errors, &WAIT, String::new(), Some("2m"), Some("never"));
        assert_eq!(
            errors,
            [
                "retry_interval: \"never\" is not a positive duration",
                "wait: at most 1m",
                "cluster: empty"
            ]
        );
        assert_eq!(settings.retry_interval, Duration::from_secs(1));

        errors.clear();
        FollowSettings::check(&mut errors, &WAIT, "r".into(), Some("0s"), None);
        assert_eq!(errors, ["wait: \"0s\" is not a positive duration"]);
    }
}
