//! The tokens of Rust source that matter for paths, with their lines: no comments, no
//! literals but strings (kept for `#[path = "..."]`), lifetimes dropped.

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    Ident(String),
    Str(String),
    /// `::`
    Sep,
    Punct(char),
}

fn ident_start(ch: char) -> bool {
    ch.is_ascii_alphabetic() || ch == '_'
}

fn ident_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_'
}

/// The tokens of `src`, each with its line.
pub(super) fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let mut lx = Lexer {
        c: src.chars().collect(),
        i: 0,
        line: 1,
        out: Vec::new(),
    };
    while lx.i < lx.c.len() {
        let ch = lx.c[lx.i];
        let next = lx.at(lx.i + 1);
        if ch == '\n' {
            lx.line += 1;
            lx.i += 1;
        } else if ch.is_whitespace() {
            lx.i += 1;
        } else if ch == '/' && next == '/' {
            lx.line_comment();
        } else if ch == '/' && next == '*' {
            lx.block_comment();
        } else if ch == '"' {
            lx.string(lx.i, 0, false);
        } else if ch == '\'' {
            lx.char_or_lifetime();
        } else if ident_start(ch) {
            lx.word();
        } else if ch.is_ascii_digit() {
            lx.skip_while_ident();
        } else if ch == ':' && next == ':' {
            lx.out.push((Tok::Sep, lx.line));
            lx.i += 2;
        } else {
            lx.out.push((Tok::Punct(ch), lx.line));
            lx.i += 1;
        }
    }
    lx.out
}

/// Where the lexer is in the source: the characters, the index, the line, the tokens so far.
struct Lexer {
    c: Vec<char>,
    i: usize,
    line: usize,
    out: Vec<(Tok, usize)>,
}

impl Lexer {
    /// The character at `i`, `\0` past the end.
    fn at(&self, i: usize) -> char {
        self.c.get(i).copied().unwrap_or('\0')
    }

    fn skip_while_ident(&mut self) {
        while self.i < self.c.len() && ident_char(self.c[self.i]) {
            self.i += 1;
        }
    }

    /// `// ...` up to the end of the line (the newline is counted by the main loop).
    fn line_comment(&mut self) {
        while self.i < self.c.len() && self.c[self.i] != '\n' {
            self.i += 1;
        }
    }

    /// `/* ... */`, nested ones included.
    fn block_comment(&mut self) {
        let c = &self.c;
        let mut depth = 0;
        while self.i < c.len() {
            if c[self.i] == '/' && c.get(self.i + 1) == Some(&'*') {
                depth += 1;
                self.i += 2;
            } else if c[self.i] == '*' && c.get(self.i + 1) == Some(&'/') {
                depth -= 1;
                self.i += 2;
                if depth == 0 {
                    break;
                }
            } else {
                if c[self.i] == '\n' {
                    self.line += 1;
                }
                self.i += 1;
            }
        }
    }

    /// A quoted string from its opening quote at `quote` (`hashes` the `#`s of a raw string,
    /// whose backslashes escape nothing): a `Str` token at the line it starts on.
    fn string(&mut self, quote: usize, hashes: usize, raw: bool) {
        let (at, c) = (self.line, &self.c);
        let mut s = String::new();
        let mut i = quote + 1;
        while i < c.len() {
            if c[i] == '\n' {
                self.line += 1;
            }
            if !raw && c[i] == '\\' {
                s.push(c[i]);
                if let Some(&n) = c.get(i + 1) {
                    s.push(n);
                    if n == '\n' {
                        self.line += 1;
                    }
                }
                i += 2;
                continue;
            }
            if c[i] == '"'
                && c[i + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&h| h == '#')
                    .count()
                    == hashes
            {
                i += 1 + hashes;
                break;
            }
            s.push(c[i]);
            i += 1;
        }
        self.out.push((Tok::Str(s), at));
        self.i = i;
    }

    /// A character literal, or a lifetime (or a label), which has no closing quote.
    fn char_or_lifetime(&mut self) {
        if self.at(self.i + 1) == '\\' {
            self.i += 2;
            while self.i < self.c.len() && self.c[self.i] != '\'' {
                self.i += 1;
            }
            self.i += 1;
        } else if self.c.get(self.i + 2) == Some(&'\'') {
            self.i += 3;
        } else {
            self.i += 1;
            self.skip_while_ident();
        }
    }

    /// An identifier, or the prefix of a raw string (`r#"..."#`), a raw identifier
    /// (`r#type`), a byte or C string (`b"..."`) or a byte (`b'x'`).
    fn word(&mut self) {
        let start = self.i;
        self.skip_while_ident();
        let word: String = self.c[start..self.i].iter().collect();
        let (i, here) = (self.i, self.at(self.i));
        let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
        if raw_prefix && (here == '"' || here == '#') {
            let hashes = self.c[i..].iter().take_while(|&&h| h == '#').count();
            if self.c.get(i + hashes) == Some(&'"') {
                self.string(i + hashes, hashes, true);
                return;
            }
            if word == "r" && hashes == 1 && self.c.get(i + 1).is_some_and(|&n| ident_start(n)) {
                self.i += 1;
                let s = self.i;
                self.skip_while_ident();
                let ident = self.c[s..self.i].iter().collect();
                self.out.push((Tok::Ident(ident), self.line));
                return;
            }
        }
        if matches!(word.as_str(), "b" | "c") && here == '"' {
            self.string(i, 0, false);
            return;
        }
        if word == "b" && here == '\'' {
            self.i += 1;
            if self.c.get(self.i) == Some(&'\\') {
                self.i += 1;
            }
            self.i += 1;
            while self.i < self.c.len() && self.c[self.i] != '\'' {
                self.i += 1;
            }
            self.i += 1;
            return;
        }
        self.out.push((Tok::Ident(word), self.line));
    }
}
