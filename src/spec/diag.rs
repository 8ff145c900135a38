//! Diagnostics that point into the user's YAML: file, line, column, the source line, a hint.
//!
//! Every error about a pipeline file is a [`Diagnostic`], rendered the way rustc renders
//! errors so that the user sees the offending line without opening the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One source file, kept whole so that diagnostics can quote its lines.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// A position in a source file (line 1-based, column 1-based).
#[derive(Clone, Debug)]
pub struct Loc {
    pub file: Arc<SourceFile>,
    pub line: usize,
    pub col: usize,
}

impl Loc {
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

impl PartialEq for Loc {
    fn eq(&self, other: &Self) -> bool {
        self.file.path == other.file.path && self.line == other.line && self.col == other.col
    }
}

/// An error in a pipeline file or on the command line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostic {
    pub message: String,
    /// Where it happened; `None` for command-line problems with no file position.
    pub loc: Option<Loc>,
    /// What the user can do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn at(loc: &Loc, message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            loc: Some(loc.clone()),
            hint: None,
        }
    }

    pub fn bare(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            loc: None,
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        if let Some(loc) = &self.loc {
            writeln!(
                f,
                "  --> {}:{}:{}",
                loc.file.path.display(),
                loc.line,
                loc.col
            )?;
            if let Some(src) = loc.file.text.lines().nth(loc.line.saturating_sub(1)) {
                let gutter = loc.line.to_string();
                let pad = " ".repeat(gutter.len());
                writeln!(f, "{pad} |")?;
                writeln!(f, "{gutter} | {src}")?;
                writeln!(f, "{pad} | {}^", " ".repeat(loc.col.saturating_sub(1)))?;
            }
        }
        if let Some(h) = &self.hint {
            writeln!(f, "  = hint: {h}")?;
        }
        Ok(())
    }
}

/// Several diagnostics at once, so one run of `pipe plan` reports every problem it can find.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "\n{n} error{} found; nothing was run.",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// The closest candidate by edit distance, for "did you mean" hints.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(word, c);
        if d <= 2.max(word.len() / 3) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A hint listing valid choices, with a "did you mean" first when one is close.
pub fn choices_hint(word: &str, valid: &[&str]) -> String {
    if valid.is_empty() {
        return "there is nothing to choose from here yet".into();
    }
    let list = valid
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match did_you_mean(word, valid.iter().copied()) {
        Some(m) => format!("did you mean `{m}`? valid: {list}"),
        None => format!("valid: {list}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        assert_eq!(did_you_mean("lr_rate", ["lr", "batch"]), None);
        assert_eq!(did_you_mean("bacth", ["lr", "batch"]), Some("batch"));
        assert_eq!(
            did_you_mean("iteration", ["iterations", "epochs"]),
            Some("iterations")
        );
    }

    #[test]
    fn an_empty_choice_list_says_so() {
        assert_eq!(
            choices_hint("train", &[]),
            "there is nothing to choose from here yet"
        );
        assert_eq!(choices_hint("longword", &["a"]), "valid: `a`");
    }
}
