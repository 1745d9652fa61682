//! RustNg native core.
