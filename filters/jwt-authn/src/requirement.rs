//! Rules (which requests need which tokens) and Envoy's requirement logic over the providers'
//! verdicts.

use crate::outcome::Failure;

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        match self {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
        }
    }
}

/// The first rule whose match holds decides; a rule without requirement lets the request
/// through unverified, and so does a request no rule matches.
#[derive(Debug)]
pub struct Rule {
    pub matcher: PathMatch,
    pub requirement: Option<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A valid token of the provider at this index.
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// No token is fine; a present token must verify.
    AllowMissing,
    /// Anything goes; valid tokens still forward their claims.
    AllowMissingOrFailed,
}

/// One provider's verdict on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Missing,
    Failed(Failure),
    Verified,
}

impl Requirement {
    /// The providers whose verdict this requirement reads (for `AllowMissing`: all of them,
    /// since a token of any provider present must verify).
    pub fn providers(&self, all: usize, out: &mut Vec<usize>) {
        match self {
            Requirement::Provider(i) => {
                if !out.contains(i) {
                    out.push(*i);
                }
            }
            Requirement::Any(list) | Requirement::All(list) => {
                list.iter().for_each(|r| r.providers(all, out));
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                (0..all).for_each(|i| {
                    if !out.contains(&i) {
                        out.push(i);
                    }
                });
            }
        }
    }

    /// `Ok` lets the request through; the failure otherwise. `verdict(i)` is provider `i`'s.
    pub fn evaluate(&self, verdict: &dyn Fn(usize) -> Verdict, all: usize) -> Result<(), Failure> {
        match self {
            Requirement::Provider(i) => match verdict(*i) {
                Verdict::Verified => Ok(()),
                Verdict::Missing => Err(Failure::Missing),
                Verdict::Failed(failure) => Err(failure),
            },
            Requirement::Any(list) => {
                let mut first_error = None;
                for requirement in list {
                    match requirement.evaluate(verdict, all) {
                        Ok(()) => return Ok(()),
                        // A real failure says more than "missing" from another branch.
                        Err(Failure::Missing) => {
                            first_error.get_or_insert(Failure::Missing);
                        }
                        Err(failure) => {
                            if first_error.is_none_or(|f| f == Failure::Missing) {
                                first_error = Some(failure);
                            }
                        }
                    }
                }
                Err(first_error.unwrap_or(Failure::Missing))
            }
            Requirement::All(list) => list.iter().try_for_each(|r| r.evaluate(verdict, all)),
            Requirement::AllowMissing => (0..all).try_for_each(|i| match verdict(i) {
                Verdict::Failed(failure) => Err(failure),
                Verdict::Missing | Verdict::Verified => Ok(()),
            }),
            Requirement::AllowMissingOrFailed => Ok(()),
        }
    }
}
