//! Lua 5.4's pattern matcher, with a step budget.
//!
//! The standard `string.find`, `match`, `gmatch` and `gsub` match in C (`lstrlib.c`) and
//! never return to the VM while they do, so neither the limit hook nor a cancel reaches a
//! match that backtracks for ever (`string.find(string.rep("a", 1e5), ".-.-.-.-.-b")`). The
//! sandbox's versions match here instead: the same algorithm as `lstrlib.c`'s (a recursive
//! backtracking matcher over the pattern text: single-character classes with `*`, `+`,
//! `-` and `?`, captures, `%b`, `%f`, back-references, anchors; the design is Roberto
//! Ierusalimschy's, this is a port written for this crate), which counts its steps (one
//! per pattern item tried, per repetition and per subject byte `%b` scans):
//!
//! * one search (a `find` or `match` call, one `gmatch` step, the search for one `gsub`
//!   replacement) may take [`BUDGET_BASE`] + [`BUDGET_PER_BYTE`] steps per byte of the
//!   subject, then fails with "pattern too complex (more than N steps)";
//! * every [`TICK_STEPS`] steps it calls back (the run's limit check: deadline, cancel flag,
//!   and those steps charged as instructions), which can stop it at once.
//!
//! Byte classes are the C locale's (ASCII), as Lua's in a process that keeps the "C" locale.

/// Steps of one search, whatever the subject.
pub(crate) const BUDGET_BASE: u64 = 1_000_000;
/// Further steps of one search per byte of its subject.
pub(crate) const BUDGET_PER_BYTE: u64 = 100;
/// Steps between two calls to the limit check.
pub(crate) const TICK_STEPS: u32 = 1000;

/// `LUA_MAXCAPTURES`.
const MAX_CAPTURES: usize = 32;
/// `MAXCCALLS` of `lstrlib.c`: nesting of the matcher's recursion.
const MAX_DEPTH: u32 = 200;

const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Why a match stopped without an answer.
#[derive(Debug, PartialEq)]
pub(crate) enum Fail {
    /// An error in the pattern or the replacement, with `lstrlib.c`'s message.
    Error(String),
    /// The search took more than its budget (the number of steps).
    Budget(u64),
    /// The limit check said stop.
    Stopped,
}

impl Fail {
    /// The message a script sees (a `Stopped` is replaced by the limit error).
    pub(crate) fn message(&self) -> String {
        match self {
            Fail::Error(m) => m.clone(),
            Fail::Budget(n) => format!("pattern too complex (more than {n} steps)"),
            Fail::Stopped => "stopped".to_owned(),
        }
    }
}

fn error<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Error(msg.into()))
}

/// One capture of a match.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Capture {
    /// A substring, as a byte range of the subject.
    Text(usize, usize),
    /// A position capture `()`: the 1-based position.
    Position(usize),
}

#[derive(Clone, Copy)]
enum Len {
    Unfinished,
    Position,
    Closed(usize),
}

/// The matcher's state for one subject and pattern (`MatchState`).
pub(crate) struct Matcher<'a, F> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: u32,
    level: usize,
    capture: [(usize, Len); MAX_CAPTURES],
    steps: u64,
    budget: u64,
    until_tick: u32,
    tick: F,
}

impl<'a, F: FnMut() -> Result<(), ()>> Matcher<'a, F> {
    /// A matcher of `pat` (without any anchor) over `src`; `tick` is the limit check.
    pub(crate) fn new(src: &'a [u8], pat: &'a [u8], tick: F) -> Self {
        Matcher {
            src,
            pat,
            depth: MAX_DEPTH,
            level: 0,
            capture: [(0, Len::Unfinished); MAX_CAPTURES],
            steps: 0,
            budget: budget(src.len()),
            until_tick: TICK_STEPS,
            tick,
        }
    }

    /// The pattern byte at `i`, or 0 past its end (C reads the string's terminating NUL).
    fn pc(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    /// The subject byte at `i`, or 0 past its end.
    fn sc(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn step(&mut self) -> Result<(), Fail> {
        self.charge(1)
    }

    /// Counts `n` steps against the budget, calling the limit check every [`TICK_STEPS`].
    fn charge(&mut self, n: u64) -> Result<(), Fail> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > self.budget {
            return Err(Fail::Budget(self.budget));
        }
        let mut n = n;
        while n >= u64::from(self.until_tick) {
            n -= u64::from(self.until_tick);
            self.until_tick = TICK_STEPS;
            (self.tick)().map_err(|()| Fail::Stopped)?;
        }
        self.until_tick -= n as u32;
        Ok(())
    }

    /// The first occurrence of the pattern's bytes, as plain text, at `from` or later
    /// (`lmemfind`); a step per candidate position and per 64 bytes compared.
    pub(crate) fn find_plain(&mut self, from: usize) -> Result<Option<usize>, Fail> {
        self.reset();
        let (src, needle) = (self.src, self.pat);
        let Some((&first, rest)) = needle.split_first() else {
            return Ok(Some(from));
        };
        if needle.len() > src.len().saturating_sub(from) {
            return Ok(None);
        }
        let last = src.len() - needle.len();
        let mut i = from;
        while i <= last {
            let Some(k) = src[i..=last].iter().position(|&c| c == first) else {
                return Ok(None);
            };
            i += k;
            self.charge(1 + (k + rest.len()) as u64 / 64)?;
            if &src[i + 1..i + needle.len()] == rest {
                return Ok(Some(i));
            }
            i += 1;
        }
        Ok(None)
    }

    /// How many values the captures of a match are (see [`Matcher::capture`]): the whole
    /// match if the pattern has no captures and `whole`.
    pub(crate) fn capture_count(&self, whole: bool) -> usize {
        if self.level == 0 && whole {
            1
        } else {
            self.level
        }
    }

    /// Starts a new search: no captures, a fresh budget.
    fn reset(&mut self) {
        self.level = 0;
        self.steps = 0;
    }

    /// The end of a match of the whole pattern at `s`, if any.
    fn match_at(&mut self, s: usize) -> Result<Option<usize>, Fail> {
        self.level = 0;
        self.do_match(s, 0)
    }

    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>, Fail> {
        if self.depth == 0 {
            return error("pattern too complex");
        }
        self.depth -= 1;
        let r = self.match_body(s, p);
        self.depth += 1;
        r
    }

    fn match_body(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, Fail> {
        loop {
            self.step()?;
            if p == self.pat.len() {
                return Ok(Some(s));
            }
            match self.pat[p] {
                b'(' => {
                    return if self.pc(p + 1) == b')' {
                        self.start_capture(s, p + 2, Len::Position)
                    } else {
                        self.start_capture(s, p + 1, Len::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                ESC if self.pc(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(e) => {
                        s = e;
                        p += 4;
                    }
                    None => return Ok(None),
                },
                ESC if self.pc(p + 1) == b'f' => {
                    p += 2;
                    if self.pc(p) != b'[' {
                        return error("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    if !self.bracket(previous, p, ep - 1) && self.bracket(self.sc(s), p, ep - 1) {
                        p = ep;
                    } else {
                        return Ok(None);
                    }
                }
                ESC if self.pc(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.pc(p + 1))? {
                        Some(e) => {
                            s = e;
                            p += 2;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.pc(ep);
                    if !self.single(s, p, ep) {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match suffix {
                        b'?' => {
                            if let Some(e) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(e));
                            }
                            p = ep + 1;
                        }
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    /// Where the single-character class at `p` ends (`classend`).
    fn class_end(&self, p: usize) -> Result<usize, Fail> {
        let c = self.pat[p];
        let mut q = p + 1;
        match c {
            ESC => {
                if q == self.pat.len() {
                    return error("malformed pattern (ends with '%')");
                }
                Ok(q + 1)
            }
            b'[' => {
                if self.pc(q) == b'^' {
                    q += 1;
                }
                loop {
                    if q >= self.pat.len() {
                        return error("malformed pattern (missing ']')");
                    }
                    let c = self.pat[q];
                    q += 1;
                    if c == ESC && q < self.pat.len() {
                        q += 1;
                    }
                    if self.pc(q) == b']' {
                        return Ok(q + 1);
                    }
                }
            }
            _ => Ok(q),
        }
    }

    /// Whether `c` is in the set `[...]` from `p` (its `[`) to `ec` (its `]`).
    fn bracket(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.pc(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                return !sig;
            }
            if self.pat[p] == ESC {
                p += 1;
                if class_matches(c, self.pc(p)) {
                    return sig;
                }
            } else if self.pc(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.pat[p - 2] <= c && c <= self.pat[p] {
                    return sig;
                }
            } else if self.pat[p] == c {
                return sig;
            }
        }
    }

    /// Whether the subject byte at `s` matches the class from `p` to `ep`.
    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            ESC => class_matches(c, self.pc(p + 1)),
            b'[' => self.bracket(c, p, ep - 1),
            d => d == c,
        }
    }

    fn match_balance(&mut self, mut s: usize, p: usize) -> Result<Option<usize>, Fail> {
        if p + 1 >= self.pat.len() {
            return error("malformed pattern (missing arguments to '%b')");
        }
        if self.sc(s) != self.pat[p] {
            return Ok(None);
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        let mut depth = 1u64;
        loop {
            s += 1;
            if s >= self.src.len() {
                return Ok(None);
            }
            self.step()?;
            let c = self.src[s];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, Fail> {
        let mut i = 0;
        while self.single(s + i, p, ep) {
            self.step()?;
            i += 1;
        }
        loop {
            if let Some(e) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(e));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>, Fail> {
        loop {
            if let Some(e) = self.do_match(s, ep + 1)? {
                return Ok(Some(e));
            }
            if self.single(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: Len) -> Result<Option<usize>, Fail> {
        if self.level >= MAX_CAPTURES {
            return error("too many captures");
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, Fail> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| matches!(self.capture[l].1, Len::Unfinished))
        else {
            return error("invalid pattern capture");
        };
        self.capture[l].1 = Len::Closed(s - self.capture[l].0);
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.capture[l].1 = Len::Unfinished;
        }
        Ok(r)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Result<Option<usize>, Fail> {
        let l = usize::from(digit).wrapping_sub(usize::from(b'1'));
        let closed = match self.capture.get(l) {
            Some(&(init, len)) if l < self.level => match len {
                Len::Unfinished => None,
                Len::Position => return Ok(None),
                Len::Closed(n) => Some((init, n)),
            },
            _ => None,
        };
        let Some((init, len)) = closed else {
            return error(format!(
                "invalid capture index %{}",
                i64::from(digit) - i64::from(b'0')
            ));
        };
        let rest = &self.src[s.min(self.src.len())..];
        Ok((rest.len() >= len && rest[..len] == self.src[init..init + len]).then_some(s + len))
    }

    /// Capture `i` of the match `s..e` (`get_onecapture`): the whole match when the
    /// pattern has no captures and `i` is 0.
    pub(crate) fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture, Fail> {
        if i >= self.level {
            if i != 0 {
                return error(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Capture::Text(s, e));
        }
        let (init, len) = self.capture[i];
        match len {
            Len::Unfinished => error("unfinished capture"),
            Len::Position => Ok(Capture::Position(init + 1)),
            Len::Closed(n) => Ok(Capture::Text(init, init + n)),
        }
    }

    /// The captures of the match `s..e` (see [`Matcher::capture_count`]).
    #[cfg(test)]
    fn captures(&self, s: usize, e: usize, whole: bool) -> Result<Vec<Capture>, Fail> {
        (0..self.capture_count(whole))
            .map(|i| self.capture(i, s, e))
            .collect()
    }

    /// The first match starting at `from` or later (only at `from` if `anchor`) whose end
    /// is not `last` (`gmatch` and `gsub` skip an empty match where the last one ended):
    /// its start and end (then see [`Matcher::capture`]). One search: a fresh budget.
    pub(crate) fn search(
        &mut self,
        from: usize,
        anchor: bool,
        last: Option<usize>,
    ) -> Result<Option<(usize, usize)>, Fail> {
        self.reset();
        let mut s = from;
        while s <= self.src.len() {
            if let Some(e) = self.match_at(s)? {
                if Some(e) != last {
                    return Ok(Some((s, e)));
                }
            }
            if anchor {
                break;
            }
            s += 1;
        }
        Ok(None)
    }
}

/// The step budget of one search over a subject of `len` bytes.
pub(crate) fn budget(len: usize) -> u64 {
    BUDGET_BASE.saturating_add(BUDGET_PER_BYTE.saturating_mul(len as u64))
}

/// Whether `c` is in the class `%cl` (`match_class`, C locale).
fn class_matches(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's `isspace` has the vertical tab, Rust's `is_ascii_whitespace` not.
        b's' => c.is_ascii_whitespace() || c == 0x0b,
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0,
        _ => return cl == c,
    };
    if cl.is_ascii_lowercase() {
        res
    } else {
        !res
    }
}

/// Whether `p` has none of the pattern's special characters (a plain search will do).
pub(crate) fn no_specials(p: &[u8]) -> bool {
    !p.iter().any(|c| SPECIALS.contains(c))
}

/// `posrelatI`: a 1-based start position, negative from the end, as a 0-based offset
/// (which may be past the end).
pub(crate) fn start_offset(pos: i64, len: usize) -> usize {
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let one_based = if pos > 0 {
        pos
    } else if pos == 0 || pos < -len_i {
        1
    } else {
        len_i + pos + 1
    };
    usize::try_from(one_based - 1).unwrap_or(usize::MAX)
}

/// The pattern without a leading `^`, and whether it had one.
pub(crate) fn strip_anchor(p: &[u8]) -> (bool, &[u8]) {
    match p.split_first() {
        Some((b'^', rest)) => (true, rest),
        _ => (false, p),
    }
}

/// What `string.find` (`find`) or `string.match` found.
#[cfg(test)]
#[derive(Debug, PartialEq)]
pub(crate) enum Found {
    /// `find`: the 1-based start and end, then the captures.
    At(usize, usize, Vec<Capture>),
    /// `match`: the captures (the whole match if the pattern has none).
    Captures(Vec<Capture>),
}

/// `str_find_aux` as the engine's `string.find` and `match` run it, with values for results.
#[cfg(test)]
pub(crate) fn find(
    s: &[u8],
    p: &[u8],
    init: i64,
    plain: bool,
    find: bool,
    tick: impl FnMut() -> Result<(), ()>,
) -> Result<Option<Found>, Fail> {
    let init = start_offset(init, s.len());
    if init > s.len() {
        return Ok(None);
    }
    if find && (plain || no_specials(p)) {
        let mut m = Matcher::new(s, p, tick);
        let at = m.find_plain(init)?;
        return Ok(at.map(|i| Found::At(i + 1, i + p.len(), Vec::new())));
    }
    let (anchor, p) = strip_anchor(p);
    let mut m = Matcher::new(s, p, tick);
    let Some((start, end)) = m.search(init, anchor, None)? else {
        return Ok(None);
    };
    Ok(Some(if find {
        Found::At(start + 1, end, m.captures(start, end, false)?)
    } else {
        Found::Captures(m.captures(start, end, true)?)
    }))
}

/// Where `gsub` writes its new string.
pub(crate) trait Sink {
    fn add(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn add(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// `string.gsub(s, p, repl, max)` with a string replacement: writes the new string to
/// `out` and returns the number of matches (0: `out` has nothing, the subject is unchanged).
pub(crate) fn gsub_str(
    subject: &[u8],
    pattern: &[u8],
    repl: &[u8],
    max: i64,
    out: &mut impl Sink,
    tick: impl FnMut() -> Result<(), ()>,
) -> Result<i64, Fail> {
    let (anchor, pattern) = strip_anchor(pattern);
    let mut matcher = Matcher::new(subject, pattern, tick);
    let mut count = 0i64;
    let mut from = 0usize;
    let mut last = None;
    while count < max {
        let Some((start, end)) = matcher.search(from, anchor, last)? else {
            break;
        };
        out.add(&subject[from..start]);
        count += 1;
        expand(out, &matcher, start, end, repl)?;
        // The next search starts where this match ended, but skips an empty match there.
        from = end;
        last = Some(end);
        if anchor {
            break;
        }
    }
    if count > 0 {
        out.add(&subject[from.min(subject.len())..]);
    }
    Ok(count)
}

/// Appends the replacement string `repl` for the match `start..end` (`add_s`): `%0` is
/// the match, `%1`..`%9` its captures, `%%` a `%`.
fn expand<F: FnMut() -> Result<(), ()>>(
    out: &mut impl Sink,
    matcher: &Matcher<'_, F>,
    start: usize,
    end: usize,
    repl: &[u8],
) -> Result<(), Fail> {
    let subject = matcher.src;
    let mut i = 0;
    while i < repl.len() {
        let byte = repl[i];
        i += 1;
        if byte != ESC {
            out.add(&[byte]);
            continue;
        }
        let escaped = repl.get(i).copied().unwrap_or(0);
        i += 1;
        if escaped == ESC {
            out.add(&[ESC]);
        } else if escaped == b'0' {
            out.add(&subject[start..end]);
        } else if escaped.is_ascii_digit() {
            match matcher.capture(usize::from(escaped - b'1'), start, end)? {
                Capture::Text(from, to) => out.add(&subject[from..to]),
                Capture::Position(at) => {
                    // A position as `tostring` writes it, without allocating.
                    let mut digits = [0u8; 20];
                    let mut k = digits.len();
                    let mut v = at;
                    loop {
                        k -= 1;
                        digits[k] = b'0' + (v % 10) as u8;
                        v /= 10;
                        if v == 0 {
                            break;
                        }
                    }
                    out.add(&digits[k..]);
                }
            }
        } else {
            return error("invalid use of '%' in replacement string");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps)]
    fn go() -> Result<(), ()> {
        Ok(())
    }

    fn text(s: &str, c: &[Capture]) -> Vec<String> {
        c.iter()
            .map(|c| match *c {
                Capture::Text(a, b) => s[a..b].to_owned(),
                Capture::Position(n) => format!("@{n}"),
            })
            .collect()
    }

    fn m(s: &str, p: &str) -> Result<Option<Vec<String>>, Fail> {
        Ok(
            match find(s.as_bytes(), p.as_bytes(), 1, false, false, go)? {
                Some(Found::Captures(c)) => Some(text(s, &c)),
                None => None,
                Some(other) => panic!("{other:?}"),
            },
        )
    }

    #[test]
    fn matches_as_lua_does() {
        assert_eq!(m("hello world", "o w").unwrap().unwrap(), ["o w"]);
        assert_eq!(
            m("key = value", "(%w+)%s*=%s*(%w+)").unwrap().unwrap(),
            ["key", "value"]
        );
        assert_eq!(
            m("THE (quick) fox", "%((%a+)%)").unwrap().unwrap(),
            ["quick"]
        );
        assert_eq!(m("f(a(b)c)d", "%b()").unwrap().unwrap(), ["(a(b)c)"]);
        assert_eq!(
            m("THE (quick) fox", "%f[%a]%a+%f[%A]").unwrap().unwrap(),
            ["THE"]
        );
        assert_eq!(m("abcabc", "()(a)()").unwrap().unwrap(), ["@1", "a", "@2"]);
        assert_eq!(m("xyyx", "(.)(.)%2%1").unwrap().unwrap(), ["x", "y"]);
        assert_eq!(m("aaab", "^a-b$").unwrap().unwrap(), ["aaab"]);
        assert_eq!(m("aaab", "^a-$").unwrap(), None);
        assert_eq!(m("a\x0bb", "a%sb").unwrap().unwrap(), ["a\x0bb"]);
        assert_eq!(m("]", "[]]").unwrap().unwrap(), ["]"]);
        assert_eq!(m("a-z", "[a%-z]+").unwrap().unwrap(), ["a-z"]);
    }

    #[test]
    fn malformed_patterns_are_lua_errors() {
        for (p, msg) in [
            ("%", "malformed pattern (ends with '%')"),
            ("[a", "malformed pattern (missing ']')"),
            ("%b", "malformed pattern (missing arguments to '%b')"),
            ("%fa", "missing '[' after '%f' in pattern"),
            ("(a", "unfinished capture"),
            ("a)", "invalid pattern capture"),
            ("%1", "invalid capture index %1"),
            ("%0", "invalid capture index %0"),
        ] {
            assert_eq!(m("a", p), Err(Fail::Error(msg.into())), "{p}");
        }
        let deep = "(".repeat(33) + &")".repeat(33);
        assert_eq!(m("", &deep), Err(Fail::Error("too many captures".into())));
        let nested = "a?".repeat(300);
        assert_eq!(
            m(&"a".repeat(300), &nested),
            Err(Fail::Error("pattern too complex".into()))
        );
    }

    #[test]
    fn backtracking_runs_out_of_steps_and_ticks_on_the_way() {
        let s = "a".repeat(100_000);
        let mut ticks = 0u64;
        let r = find(s.as_bytes(), b".-.-.-.-.-b", 1, false, true, || {
            ticks += 1;
            Ok(())
        });
        let budget = budget(s.len());
        assert_eq!(r, Err(Fail::Budget(budget)));
        assert_eq!(ticks, budget / u64::from(TICK_STEPS));
        // The check can stop it at once.
        let r = find(s.as_bytes(), b".-.-.-.-.-b", 1, false, true, || Err(()));
        assert_eq!(r, Err(Fail::Stopped));
        assert_eq!(
            Fail::Budget(7).message(),
            "pattern too complex (more than 7 steps)"
        );
    }

    #[test]
    fn gsub_with_a_string() {
        let g = |s: &str, p: &str, r: &str, max: i64| {
            let mut out = Vec::new();
            let n = gsub_str(s.as_bytes(), p.as_bytes(), r.as_bytes(), max, &mut out, go)
                .map_err(|e| e.message())?;
            let out = if n == 0 {
                s.to_owned()
            } else {
                String::from_utf8(out).unwrap()
            };
            Ok::<_, String>((out, n))
        };
        assert_eq!(
            g("hello world", "o", "0", 99),
            Ok(("hell0 w0rld".into(), 2))
        );
        assert_eq!(
            g("hello world", "(o)", "[%1%1]", 1),
            Ok(("hell[oo] world".into(), 1))
        );
        assert_eq!(g("abc", "", "-", 99), Ok(("-a-b-c-".into(), 4)));
        assert_eq!(g("abc", "()", "%1", 99), Ok(("1a2b3c4".into(), 4)));
        assert_eq!(g("abc", "()", "%1", 2), Ok(("1a2bc".into(), 2)));
        assert_eq!(g("abc", "^a", "%0%0", 99), Ok(("aabc".into(), 1)));
        assert_eq!(g("abc", "x*", "-", 99), Ok(("-a-b-c-".into(), 4)));
        assert_eq!(
            g("abc", "b", "%2", 99),
            Err("invalid capture index %2".into())
        );
        assert_eq!(
            g("abc", "b", "%x", 99),
            Err("invalid use of '%' in replacement string".into())
        );
    }
}
