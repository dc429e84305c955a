//! Splitting SQL scripts into statements.
//!
//! A statement ends at a `;` outside of quotes and comments. Understood:
//! `-- line` and `/* block */` comments (nested, as PostgreSQL allows),
//! `'strings'` with `''` and (MySQL) backslash escapes, `"identifiers"`,
//! `` `identifiers` ``, and PostgreSQL dollar-quoted bodies (`$$ … $$`,
//! `$tag$ … $tag$`). Comments are kept inside the statement they belong
//! to; statements that hold only comments and whitespace are dropped.

/// One statement of a script, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement text, trimmed, without its terminating `;`.
    pub text: String,
    /// The line of the script where it starts.
    pub line: usize,
}

/// A script that cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what} is never closed")]
pub struct SplitError {
    /// What was left open (a string, a comment, a dollar-quoted body).
    pub what: &'static str,
    /// The line where it opened.
    pub line: usize,
}

/// Whether backslash escapes a quote inside strings (MySQL/MariaDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// `\'` is an escaped quote (MySQL, MariaDB).
    Backslash,
    /// Only `''` escapes a quote (standard SQL, PostgreSQL, SQLite).
    Standard,
}

/// Splits `script` into statements.
pub fn split(script: &str, escapes: Escapes) -> Result<Vec<Statement>, SplitError> {
    let bytes = script.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut line = 1;
    let mut start_line = 1;
    let mut i = 0;
    let mut meaningful = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let open = line;
                let mut depth = 0usize;
                loop {
                    match (bytes.get(i), bytes.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(b'\n'), _) => {
                            line += 1;
                            i += 1;
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => {
                            return Err(SplitError {
                                what: "a /* comment",
                                line: open,
                            });
                        }
                    }
                }
            }
            b'\'' | b'"' | b'`' => {
                meaningful = true;
                let open = line;
                let quote = b;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => {
                            let what = match quote {
                                b'\'' => "a 'string'",
                                b'"' => "a \"quoted identifier\"",
                                _ => "a `quoted identifier`",
                            };
                            return Err(SplitError { what, line: open });
                        }
                        Some(b'\\') if quote == b'\'' && escapes == Escapes::Backslash => i += 2,
                        Some(&c) if c == quote => {
                            if bytes.get(i + 1) == Some(&quote) {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                        Some(b'\n') => {
                            line += 1;
                            i += 1;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'$' if dollar_tag(bytes, i).is_some() => {
                meaningful = true;
                let tag = dollar_tag(bytes, i).expect("checked");
                let open = line;
                i += tag.len();
                loop {
                    if i >= bytes.len() {
                        return Err(SplitError {
                            what: "a $$ dollar-quoted body",
                            line: open,
                        });
                    }
                    if bytes[i..].starts_with(tag) {
                        i += tag.len();
                        break;
                    }
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b';' => {
                if meaningful {
                    statements.push(Statement {
                        text: script[start..i].trim().to_owned(),
                        line: start_line,
                    });
                }
                meaningful = false;
                i += 1;
                start = i;
                start_line = line;
            }
            c => {
                if !c.is_ascii_whitespace() {
                    if !meaningful {
                        // The statement's line is that of its first token.
                        start_line = line;
                    }
                    meaningful = true;
                }
                i += 1;
            }
        }
    }
    if meaningful {
        statements.push(Statement {
            text: script[start..].trim().to_owned(),
            line: start_line,
        });
    }
    Ok(statements)
}

/// The `$tag$` opening at `i`, if any: `$$` or `$` + identifier + `$`.
fn dollar_tag(bytes: &[u8], i: usize) -> Option<&[u8]> {
    // A `$` right after an identifier character is part of a name (`a$b`)
    // or a positional parameter context, not a quote.
    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
        return None;
    }
    let mut j = i + 1;
    while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
        if j == i + 1 && bytes[j].is_ascii_digit() {
            return None; // $1 is a parameter
        }
        j += 1;
    }
    (bytes.get(j) == Some(&b'$')).then(|| &bytes[i..=j])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(script: &str, escapes: Escapes, expected: &[&str]) {
        let got: Vec<String> = split(script, escapes)
            .unwrap_or_else(|e| panic!("{script:?}: {e}"))
            .into_iter()
            .map(|s| s.text)
            .collect();
        assert_eq!(got, expected, "script: {script:?}");
    }

    #[test]
    fn statements_split_on_semicolons_outside_quotes_and_comments() {
        use Escapes::*;
        check("select 1; select 2;", Standard, &["select 1", "select 2"]);
        check(
            "select 1;\n\n  select 2",
            Standard,
            &["select 1", "select 2"],
        );
        check(
            "insert into t values ('a;b');",
            Standard,
            &["insert into t values ('a;b')"],
        );
        check(
            "insert into t values ('it''s; ok');",
            Standard,
            &["insert into t values ('it''s; ok')"],
        );
        check(
            r"insert into t values ('a\';b');",
            Backslash,
            &[r"insert into t values ('a\';b')"],
        );
        check(
            "select \"a;b\" from `c;d`;",
            Standard,
            &["select \"a;b\" from `c;d`"],
        );
        check(
            "-- only a comment;\nselect 1;",
            Standard,
            &["-- only a comment;\nselect 1"],
        );
        check("select 1; -- trailing; comment\n", Standard, &["select 1"]);
        check(
            "/* a; /* nested; */ b; */ select 1;",
            Standard,
            &["/* a; /* nested; */ b; */ select 1"],
        );
        check(
            "create function f() returns int as $$ select 1; $$ language sql; select 2;",
            Standard,
            &[
                "create function f() returns int as $$ select 1; $$ language sql",
                "select 2",
            ],
        );
        check(
            "do $body$ begin perform 1; end $body$; select $1;",
            Standard,
            &["do $body$ begin perform 1; end $body$", "select $1"],
        );
        check(";;  ;\n", Standard, &[]);
    }

    #[test]
    fn statements_know_their_line_and_open_quotes_are_reported() {
        let s = split("\n-- c\nselect 1;\n\nselect\n 2;", Escapes::Standard).unwrap();
        assert_eq!(s[0].line, 3);
        assert_eq!(s[1].line, 5);
        let e = split("select 1;\nselect 'oops;", Escapes::Standard).unwrap_err();
        assert_eq!(
            e,
            SplitError {
                what: "a 'string'",
                line: 2
            }
        );
        let e = split("/* open", Escapes::Standard).unwrap_err();
        assert_eq!(e.line, 1);
        let e = split("select $x$ never closed", Escapes::Standard).unwrap_err();
        assert_eq!(e.what, "a $$ dollar-quoted body");
    }
}
