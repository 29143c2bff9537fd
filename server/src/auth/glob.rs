//! Job-name globs, as `[[auth.principal]] jobs` writes them: `*` stands for any run of
//! characters (none included), every other character for itself. Nothing else is special,
//! as PROTOCOL.md says, so a glob can never mean more than its author sees (a glob crate
//! would give `?`, `[...]` and `{a,b}` meanings too). Matching is the classic greedy
//! backtracking over the last `*`: linear in practice, never exponential.

use std::fmt;
use std::str::FromStr;

/// A validated glob over job names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobGlob(String);

impl JobGlob {
    /// The glob that matches every job.
    pub(crate) fn any() -> JobGlob {
        JobGlob("*".into())
    }

    /// Whether this glob is `*` alone: every job, present and future.
    pub(crate) fn is_any(&self) -> bool {
        self.0.bytes().all(|b| b == b'*')
    }

    /// Whether `name` matches the whole glob.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut si) = (0, 0);
        // Where the last `*` was, and where in `name` it began matching.
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                // Let the last `*` take one more character and try again after it.
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&b| b == b'*')
    }
}

impl FromStr for JobGlob {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("a job glob must not be empty (write \"*\" for every job)".into());
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '*')))
        {
            return Err(format!(
                "{s:?} is not a job glob: {c:?} can never occur in a job name \
                 (allowed: A-Z a-z 0-9 _ . : - and * for any run of characters)"
            ));
        }
        Ok(JobGlob(s.to_owned()))
    }
}

impl fmt::Display for JobGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> JobGlob {
        s.parse().unwrap()
    }

    #[test]
    fn star_matches_any_run_of_characters() {
        assert!(g("*").matches("anything.at:all"));
        assert!(g("tweets.*").matches("tweets.user"));
        assert!(g("tweets.*").matches("tweets."));
        assert!(!g("tweets.*").matches("tweets"));
        assert!(!g("tweets.*").matches("xtweets.user"));
        assert!(g("*.v2").matches("users.v2"));
        assert!(!g("*.v2").matches("users.v2x"));
        assert!(g("a*b*c").matches("aXXbYYc"));
        assert!(g("a*b*c").matches("abc"));
        assert!(!g("a*b*c").matches("acb"));
        assert!(g("exact").matches("exact"));
        assert!(!g("exact").matches("exactly"));
        assert!(g("**").is_any() && !g("a*").is_any());
    }

    #[test]
    fn globs_with_characters_no_job_name_has_are_refused() {
        for bad in ["", "tweets/*", "a?", "[ab]", "{a,b}", "é"] {
            assert!(bad.parse::<JobGlob>().is_err(), "{bad}");
        }
    }
}
