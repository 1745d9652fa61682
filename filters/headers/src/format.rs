//! Header values with Envoy's substitution commands: `%REQ(x-user)%`, `%RESPONSE_CODE%`,
//! `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%` and the like, parsed once when the plugin is
//! configured. `%%` is a literal `%`.
//!
//! A command reads what the phase that runs it has: the request's headers in
//! `request_headers_to_add`, the response's in `response_headers_to_add` (a proxy-wasm
//! filter cannot read the request's headers once they have left, in Envoy either), and the
//! connection's addresses and protocol in both. A command the phase cannot serve is refused
//! when the plugin is configured, not when a request comes.

use std::borrow::Cow;

/// The phase whose headers a value is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

/// What a command stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `%REQ(X?Y):Z%`: the request header `X`, else `Y`, at most `Z` characters.
    RequestHeader(Header),
    /// `%RESP(X?Y):Z%`: the same from the response.
    ResponseHeader(Header),
    /// `%RESPONSE_CODE%`.
    ResponseCode,
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`, `HTTP/3`.
    Protocol,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%` and `%DOWNSTREAM_LOCAL_ADDRESS%`, whole or a part.
    Address(Side, AddressPart),
}

/// A header a command reads, with Envoy's fallback and truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub fallback: Option<String>,
    pub max_length: Option<usize>,
}

/// Which end of the downstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (`source.address`).
    Remote,
    /// RustNg's listener (`destination.address`).
    Local,
}

/// `ADDRESS` (`ip:port`), `ADDRESS_WITHOUT_PORT` or `PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPart {
    Whole,
    WithoutPort,
    Port,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Command(Command),
}

/// A configured header value: text, commands, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValueFormat {
    parts: Vec<Part>,
}

impl ValueFormat {
    /// Parses `value` for `phase`; the error names what is wrong.
    pub fn parse(value: &str, phase: Phase) -> Result<ValueFormat, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = value;
        while let Some(start) = rest.find('%') {
            text.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            if let Some(escaped) = after.strip_prefix('%') {
                text.push('%');
                rest = escaped;
                continue;
            }
            let end = after
                .find('%')
                .ok_or_else(|| format!("unterminated command in \"{value}\" (write %% for %)"))?;
            let command = parse_command(&after[..end], phase)?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Command(command));
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(ValueFormat { parts })
    }

    /// The value, with each command's answer from `read` (`None`: nothing, as Envoy leaves
    /// a missing value empty in a header). Plain text is borrowed, not copied.
    pub fn render<'a>(&'a self, read: impl Fn(&Command) -> Option<&'a str>) -> Cow<'a, str> {
        match self.parts.as_slice() {
            [] => Cow::Borrowed(""),
            [Part::Text(text)] => Cow::Borrowed(text),
            [Part::Command(command)] => Cow::Borrowed(read(command).unwrap_or_default()),
            parts => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(text) => out.push_str(text),
                        Part::Command(command) => out.push_str(read(command).unwrap_or_default()),
                    }
                }
                Cow::Owned(out)
            }
        }
    }
}

fn parse_command(command: &str, phase: Phase) -> Result<Command, String> {
    let (name, argument, max_length) = split_command(command)?;
    let header = |reads: Phase| -> Result<Header, String> {
        if reads != phase {
            return Err(format!(
                "%{name}(...)% is not available in {}: a filter reads only the headers of the \
                 phase it runs in",
                phase_field(phase)
            ));
        }
        let argument = argument.ok_or_else(|| format!("%{name}(...)% needs a header name"))?;
        let (first, fallback) = match argument.split_once('?') {
            Some((first, fallback)) => (first, Some(fallback.to_ascii_lowercase())),
            None => (argument, None),
        };
        Ok(Header {
            name: first.to_ascii_lowercase(),
            fallback,
            max_length,
        })
    };
    let plain = |command: Command| -> Result<Command, String> {
        if argument.is_some() || max_length.is_some() {
            return Err(format!("%{name}% takes no argument"));
        }
        Ok(command)
    };
    match name {
        "REQ" => header(Phase::Request).map(Command::RequestHeader),
        "RESP" => header(Phase::Response).map(Command::ResponseHeader),
        "RESPONSE_CODE" if phase == Phase::Request => Err(format!(
            "%RESPONSE_CODE% is not available in {}",
            phase_field(phase)
        )),
        "RESPONSE_CODE" => plain(Command::ResponseCode),
        "PROTOCOL" => plain(Command::Protocol),
        "DOWNSTREAM_REMOTE_ADDRESS" => plain(Command::Address(Side::Remote, AddressPart::Whole)),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            plain(Command::Address(Side::Remote, AddressPart::WithoutPort))
        }
        "DOWNSTREAM_REMOTE_PORT" => plain(Command::Address(Side::Remote, AddressPart::Port)),
        "DOWNSTREAM_LOCAL_ADDRESS" => plain(Command::Address(Side::Local, AddressPart::Whole)),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            plain(Command::Address(Side::Local, AddressPart::WithoutPort))
        }
        "DOWNSTREAM_LOCAL_PORT" => plain(Command::Address(Side::Local, AddressPart::Port)),
        _ => Err(format!("unknown command %{command}%")),
    }
}

/// `NAME`, `NAME(ARG)` or `NAME(ARG):LENGTH`.
fn split_command(command: &str) -> Result<(&str, Option<&str>, Option<usize>), String> {
    let Some(open) = command.find('(') else {
        return Ok((command, None, None));
    };
    let close = command
        .rfind(')')
        .filter(|close| *close > open)
        .ok_or_else(|| format!("%{command}%: unbalanced parentheses"))?;
    let max_length = match &command[close + 1..] {
        "" => None,
        length => Some(
            length
                .strip_prefix(':')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("%{command}%: the length after ':' is not a number"))?,
        ),
    };
    Ok((
        &command[..open],
        Some(&command[open + 1..close]),
        max_length,
    ))
}

fn phase_field(phase: Phase) -> &'static str {
    match phase {
        Phase::Request => "request_headers_to_add",
        Phase::Response => "response_headers_to_add",
    }
}

/// `value` cut to at most `max` characters (on a character boundary).
pub fn truncated(value: &str, max: Option<usize>) -> &str {
    match max.and_then(|max| value.char_indices().nth(max)) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

/// The part of an `ip:port` address (`[v6]:port` for IPv6) a command asks for.
pub fn address_part(address: &str, part: AddressPart) -> &str {
    let split = address
        .rfind(':')
        .map(|colon| (&address[..colon], &address[colon + 1..]));
    match (part, split) {
        (AddressPart::Whole, _) | (_, None) => address,
        (AddressPart::WithoutPort, Some((host, _))) => host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host),
        (AddressPart::Port, Some((_, port))) => port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(value: &str, phase: Phase) -> String {
        let format = ValueFormat::parse(value, phase).expect("valid");
        format
            .render(|command| match command {
                Command::RequestHeader(h) if h.name == "x-user" => {
                    Some(truncated("alice-the-first", h.max_length))
                }
                Command::RequestHeader(_) => None,
                Command::ResponseCode => Some("201"),
                Command::Protocol => Some("HTTP/1.1"),
                Command::Address(Side::Remote, part) => Some(address_part("10.0.0.7:4711", *part)),
                Command::Address(Side::Local, part) => Some(address_part("[::1]:8080", *part)),
                Command::ResponseHeader(_) => Some("r"),
            })
            .into_owned()
    }

    #[test]
    fn commands_and_text_render_as_envoy_writes_them() {
        assert_eq!(render("plain", Phase::Request), "plain");
        assert_eq!(render("100%% sure", Phase::Request), "100% sure");
        assert_eq!(render("%REQ(X-User)%", Phase::Request), "alice-the-first");
        assert_eq!(render("u=%REQ(x-user):5%;", Phase::Request), "u=alice;");
        assert_eq!(render("[%REQ(x-none)%]", Phase::Request), "[]");
        assert_eq!(render("%RESPONSE_CODE%", Phase::Response), "201");
        assert_eq!(render("%PROTOCOL%", Phase::Response), "HTTP/1.1");
        assert_eq!(
            render(
                "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%/%DOWNSTREAM_REMOTE_PORT%",
                Phase::Request
            ),
            "10.0.0.7/4711"
        );
        assert_eq!(
            render("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", Phase::Request),
            "::1"
        );
        assert_eq!(
            render("%DOWNSTREAM_LOCAL_ADDRESS%", Phase::Request),
            "[::1]:8080"
        );
    }

    #[test]
    fn fallback_names_are_kept() {
        let format = ValueFormat::parse("%REQ(x-a?X-B):3%", Phase::Request).expect("valid");
        let seen = std::cell::RefCell::new(None);
        format.render(|command| {
            *seen.borrow_mut() = Some(command.clone());
            None
        });
        assert_eq!(
            seen.into_inner(),
            Some(Command::RequestHeader(Header {
                name: "x-a".into(),
                fallback: Some("x-b".into()),
                max_length: Some(3),
            }))
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (value, phase, error) in [
            ("50%", Phase::Request, "unterminated command"),
            ("%NOPE%", Phase::Request, "unknown command %NOPE%"),
            (
                "%REQ(x)%",
                Phase::Response,
                "not available in response_headers_to_add",
            ),
            (
                "%RESP(x)%",
                Phase::Request,
                "not available in request_headers_to_add",
            ),
            ("%RESPONSE_CODE%", Phase::Request, "not available"),
            ("%REQ()", Phase::Request, "unterminated"),
            ("%REQ(x:3%", Phase::Request, "unbalanced"),
            ("%REQ(x):y%", Phase::Request, "not a number"),
            ("%PROTOCOL(x)%", Phase::Request, "takes no argument"),
        ] {
            let refused = ValueFormat::parse(value, phase).expect_err(value);
            assert!(refused.contains(error), "{value}: {refused}");
        }
    }
}
