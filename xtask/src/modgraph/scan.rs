//! What one file of the crate declares (`mod` items, with `#[path]`) and which top-level
//! modules it uses (`crate::m`, `super::...::m` reaching the root), test code left out.

use super::lex::{tokens, Tok};

/// What one file declares and uses.
#[derive(Debug, Default)]
pub(super) struct FileScan {
    /// `mod name;` items outside test code: (name, `#[path]`, inside inline modules).
    pub(super) children: Vec<(String, Option<String>, Vec<String>)>,
    /// Top-level modules used, with the line.
    pub(super) refs: Vec<(String, usize)>,
}

fn is_ident(t: Option<&(Tok, usize)>, s: &str) -> bool {
    matches!(t, Some((Tok::Ident(i), _)) if i == s)
}

fn is_punct(t: Option<&(Tok, usize)>, p: char) -> bool {
    matches!(t, Some((Tok::Punct(c), _)) if *c == p)
}

/// The index after the bracket group opening at `i` (`(`, `[` or `{`).
fn skip_group(t: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < t.len() {
        match t[i].0 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The index after the item starting at `i`: up to its `;` or `,`, or its closing brace.
fn skip_item(t: &[(Tok, usize)], mut i: usize) -> usize {
    while i < t.len() {
        match t[i].0 {
            Tok::Punct(';' | ',') => return i + 1,
            // The end of the enclosing block: the item was its last expression.
            Tok::Punct(')' | ']' | '}') => return i,
            Tok::Punct('{') => {
                let after = skip_group(t, i);
                // `struct S { .. }`, `fn f() { .. }`, `mod m { .. }`: a block ends the item,
                // unless an expression goes on (`#[cfg(test)] let x = S { .. };`).
                return if is_punct(t.get(after), ';') {
                    after + 1
                } else {
                    after
                };
            }
            Tok::Punct('(' | '[') => i = skip_group(t, i),
            _ => i += 1,
        }
    }
    i
}

/// The modules a path group names: `{a::x, b, self}` after `crate::`.
fn group_heads(t: &[(Tok, usize)], open: usize) -> Vec<(String, usize)> {
    let end = skip_group(t, open);
    let mut out = Vec::new();
    let mut depth = 0;
    let mut expect_head = false;
    for (tok, line) in &t[open..end] {
        match tok {
            Tok::Punct('{') => {
                depth += 1;
                expect_head = depth == 1;
            }
            Tok::Punct('}') => depth -= 1,
            Tok::Punct(',') if depth == 1 => expect_head = true,
            Tok::Ident(name) if expect_head => {
                if name != "self" {
                    out.push((name.clone(), *line));
                }
                expect_head = false;
            }
            _ => expect_head = false,
        }
    }
    out
}

/// At a `crate` (`root`) or `super` token: the module a path from there names, if it reaches
/// the crate root (`crate::m`, `crate::{a, b}`, `super::super::m` from `up` modules deep).
/// Returns where to go on.
fn path_at(
    t: &[(Tok, usize)],
    i: usize,
    root: &str,
    up: usize,
    refs: &mut Vec<(String, usize)>,
) -> usize {
    let mut k = i;
    if is_ident(t.get(i), "super") {
        let mut supers = 0;
        while is_ident(t.get(k), "super") && matches!(t.get(k + 1), Some((Tok::Sep, _))) {
            supers += 1;
            k += 2;
        }
        if supers == 0 || supers != up {
            return k.max(i + 1);
        }
        k -= 1; // at the last `::`
    } else if is_ident(t.get(i), root) && matches!(t.get(i + 1), Some((Tok::Sep, _))) {
        k += 1;
    } else {
        return i + 1;
    }
    match t.get(k + 1) {
        Some((Tok::Ident(m), line)) => refs.push((m.clone(), *line)),
        Some((Tok::Punct('{'), _)) => refs.extend(group_heads(t, k + 1)),
        _ => {}
    }
    k + 1
}

/// Reads one file: `root` is the path naming the crate (`crate`, or `enforcer_agent` in the
/// binary), `depth` how deep the file's module is below the library's root (`usize::MAX` in
/// the binary, whose `super` never reaches it).
pub(super) fn scan(src: &str, root: &str, depth: usize) -> FileScan {
    let t = tokens(src);
    let mut s = Scanner {
        t: &t,
        root,
        depth,
        out: FileScan::default(),
        inline: Vec::new(),
        braces: 0,
    };
    let mut i = 0;
    while i < t.len() {
        i = if is_punct(t.get(i), '#') {
            match s.attributed(i) {
                Some(next) => next,
                None => return FileScan::default(), // `#![cfg(test)]`: the whole file is test code
            }
        } else {
            s.token(i)
        };
    }
    s.out
}

/// A file being read, token by token.
struct Scanner<'a> {
    t: &'a [(Tok, usize)],
    root: &'a str,
    depth: usize,
    out: FileScan,
    /// Inline modules open around the current token: (name, brace depth inside it).
    inline: Vec<(String, usize)>,
    braces: usize,
}

/// What a run of attributes says of the item after it.
struct Attributes {
    /// `#[cfg(test)]` (not `cfg(not(test))`).
    test: bool,
    /// `#[path = "..."]`.
    path: Option<String>,
    /// The index after the last attribute.
    end: usize,
}

/// The attributes from the `[` at `open` on (one item's, `#[a] #[b]`).
fn attributes(t: &[(Tok, usize)], open: usize) -> Attributes {
    let (mut test, mut path) = (false, None);
    let mut j = open;
    while is_punct(t.get(j), '[') {
        let end = skip_group(t, j);
        let body = &t[j + 1..end.saturating_sub(1)];
        let idents: Vec<&str> = body
            .iter()
            .filter_map(|(k, _)| match k {
                Tok::Ident(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        if idents.first() == Some(&"cfg") && idents.contains(&"test") {
            test |= !idents.contains(&"not");
        }
        if idents.first() == Some(&"path") {
            if let Some((Tok::Str(p), _)) = body.last() {
                path = Some(p.clone());
            }
        }
        j = end;
        // The next attribute of the same item.
        if is_punct(t.get(j), '#') && is_punct(t.get(j + 1), '[') {
            j += 1;
        }
    }
    Attributes { test, path, end: j }
}

impl Scanner<'_> {
    /// How many modules up `super` must go to reach the library's root from here.
    fn up(&self) -> usize {
        self.depth.saturating_add(self.inline.len())
    }

    /// The inline modules the current token is in.
    fn within(&self) -> Vec<String> {
        self.inline.iter().map(|(n, _)| n.clone()).collect()
    }

    /// At a `#`: attributes, then what they apply to (test code is skipped, a `#[path]`
    /// module recorded). Returns where to go on; `None` for `#![cfg(test)]` at the top.
    fn attributed(&mut self, i: usize) -> Option<usize> {
        let t = self.t;
        let inner = is_punct(t.get(i + 1), '!');
        let open = if inner { i + 2 } else { i + 1 };
        if !is_punct(t.get(open), '[') {
            return Some(i + 1);
        }
        let attrs = attributes(t, open);
        let j = attrs.end;
        if inner {
            if attrs.test && self.braces == 0 {
                return None;
            }
            return Some(j);
        }
        if attrs.test {
            return Some(skip_item(t, j));
        }
        // Paths in attributes are uses too (`#[arg(value_parser = crate::m::parse)]`).
        let up = self.up();
        let mut k = open;
        while k < j {
            k = match &t[k].0 {
                Tok::Ident(w) if w == self.root || w == "super" => {
                    path_at(&t[..j], k, self.root, up, &mut self.out.refs)
                }
                _ => k + 1,
            };
        }
        // `#[path = "..."] mod name;`
        let mut k = j;
        if is_ident(t.get(k), "pub") {
            k += 1;
            if is_punct(t.get(k), '(') {
                k = skip_group(t, k);
            }
        }
        if let (true, Some((Tok::Ident(name), _)), true) = (
            is_ident(t.get(k), "mod"),
            t.get(k + 1),
            is_punct(t.get(k + 2), ';'),
        ) {
            let within = self.within();
            self.out.children.push((name.clone(), attrs.path, within));
            return Some(k + 3);
        }
        Some(j)
    }

    /// Any other token: braces (for inline modules), `mod` items, paths from the crate root.
    /// Returns where to go on.
    fn token(&mut self, i: usize) -> usize {
        let t = self.t;
        match &t[i].0 {
            Tok::Punct('{') => self.braces += 1,
            Tok::Punct('}') => {
                if self.inline.last().is_some_and(|(_, d)| *d == self.braces) {
                    self.inline.pop();
                }
                self.braces = self.braces.saturating_sub(1);
            }
            Tok::Ident(w) if w == "mod" => {
                if let Some((Tok::Ident(name), _)) = t.get(i + 1) {
                    if is_punct(t.get(i + 2), ';') {
                        let within = self.within();
                        self.out.children.push((name.clone(), None, within));
                        return i + 3;
                    }
                    if is_punct(t.get(i + 2), '{') {
                        self.inline.push((name.clone(), self.braces + 1));
                    }
                }
            }
            Tok::Ident(w) if w == self.root || w == "super" => {
                let up = self.up();
                return path_at(t, i, self.root, up, &mut self.out.refs);
            }
            _ => {}
        }
        i + 1
    }
}
