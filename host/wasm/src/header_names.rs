//! The header names a module sets, parsed once per instance. A name outside the standard set
//! (`x-filter-tag`) parses into a fresh allocation every time; a module sets the same few
//! names on every request, and a kept one is a reference-count increment instead.

use http::header::{HeaderName, InvalidHeaderName};

/// How many names an instance keeps. A module that sets more distinct names than this parses
/// the rest each time, so a hostile module cannot grow the list.
const KEPT: usize = 32;

/// Names by their lowercase bytes, in the order first seen.
#[derive(Default)]
pub(crate) struct HeaderNames {
    names: Vec<HeaderName>,
}

impl HeaderNames {
    /// The name for `key`: a kept one when `key` is spelled as it was (lowercase), else
    /// parsed (and kept, while there is room).
    pub(crate) fn name(&mut self, key: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some(name) = self.names.iter().find(|n| n.as_str().as_bytes() == key) {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(key)?;
        if self.names.len() < KEPT && name.as_str().as_bytes() == key {
            self.names.push(name.clone());
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_up_to_the_bound_and_still_parsed_after() {
        let mut names = HeaderNames::default();
        let first = names.name(b"x-filter-tag").expect("valid");
        assert_eq!(names.name(b"x-filter-tag").expect("valid"), first);
        // Mixed case parses to the same name, but is not what is kept.
        assert_eq!(names.name(b"X-Filter-Tag").expect("valid"), first);
        assert_eq!(names.names.len(), 1);
        for i in 0..100 {
            let key = format!("x-{i}");
            assert_eq!(names.name(key.as_bytes()).expect("valid").as_str(), key);
        }
        assert_eq!(names.names.len(), KEPT);
        assert!(names.name(b"bad name").is_err());
    }
}
