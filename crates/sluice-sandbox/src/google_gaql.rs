//! A tiny GAQL (Google Ads Query Language) parser.
//!
//! Covers the subset connectors use: `SELECT f, … FROM resource [WHERE c
//! AND …] [ORDER BY f [ASC|DESC], …] [LIMIT n]` with conditions `=`, `!=`,
//! `<`, `<=`, `>`, `>=`, `IN (…)`, `NOT IN (…)`, `BETWEEN a AND b`,
//! `DURING <preset>`. It knows nothing about which fields exist; the Google
//! module validates names against its catalogue. Errors carry the
//! `QueryError` enum name the real API would answer with.

/// A literal on the right-hand side of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Num(f64),
    /// A bare word: an enum constant (`ENABLED`) or a DURING preset.
    Ident(String),
}

impl Lit {
    pub fn text(&self) -> String {
        match self {
            Lit::Str(s) | Lit::Ident(s) => s.clone(),
            Lit::Num(n) => {
                if n.fract() == 0.0 {
                    format!("{}", *n as i64)
                } else {
                    n.to_string()
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Lit),
    Ne(Lit),
    Lt(Lit),
    Le(Lit),
    Gt(Lit),
    Ge(Lit),
    In(Vec<Lit>),
    NotIn(Vec<Lit>),
    Between(Lit, Lit),
    During(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub field: String,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub select: Vec<String>,
    pub from: String,
    pub conditions: Vec<Cond>,
    /// (field, descending)
    pub order_by: Vec<(String, bool)>,
    pub limit: Option<usize>,
}

/// A parse error: the `QueryError` enum name and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct GaqlError {
    pub code: &'static str,
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> GaqlError {
    GaqlError {
        code,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

fn tokenize(q: &str) -> Result<Vec<Tok>, GaqlError> {
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            out.push(Tok::Num(
                s.parse()
                    .map_err(|_| err("BAD_NUMBER", format!("Bad number {s}")))?,
            ));
        } else if c == '\'' || c == '"' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            if i >= chars.len() {
                return Err(err(
                    "UNEXPECTED_END_OF_QUERY",
                    "Unterminated string literal",
                ));
            }
            i += 1;
            out.push(Tok::Str(s));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "!=" => Some("!="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
                continue;
            }
            let s = match c {
                ',' => ",",
                '(' => "(",
                ')' => ")",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                _ => return Err(err("BAD_SYMBOL", format!("Unexpected character '{c}'"))),
            };
            out.push(Tok::Sym(s));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn expect_kw(&mut self, kw: &str, code: &'static str) -> Result<(), GaqlError> {
        if self.is_kw(kw) {
            self.pos += 1;
            Ok(())
        } else {
            Err(err(code, format!("Expected {kw}")))
        }
    }

    fn field(&mut self) -> Result<String, GaqlError> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            Some(_) => Err(err("UNEXPECTED_INPUT", "Expected a field name")),
            None => Err(err("UNEXPECTED_END_OF_QUERY", "Expected a field name")),
        }
    }

    fn lit(&mut self) -> Result<Lit, GaqlError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Num(n)) => Ok(Lit::Num(n)),
            Some(Tok::Word(w)) => Ok(Lit::Ident(w)),
            Some(_) => Err(err("BAD_VALUE", "Expected a value")),
            None => Err(err("UNEXPECTED_END_OF_QUERY", "Expected a value")),
        }
    }

    fn list(&mut self) -> Result<Vec<Lit>, GaqlError> {
        if self.next() != Some(Tok::Sym("(")) {
            return Err(err("EXPECTED_LIST", "Expected a parenthesised list"));
        }
        let mut out = vec![self.lit()?];
        loop {
            match self.next() {
                Some(Tok::Sym(",")) => out.push(self.lit()?),
                Some(Tok::Sym(")")) => return Ok(out),
                _ => return Err(err("EXPECTED_LIST", "Unterminated list")),
            }
        }
    }
}

/// Parse one GAQL query.
pub fn parse(q: &str) -> Result<Query, GaqlError> {
    let mut p = Parser {
        toks: tokenize(q)?,
        pos: 0,
    };
    p.expect_kw("SELECT", "EXPECTED_SELECT")?;
    let mut select = vec![p.field()?];
    while p.peek() == Some(&Tok::Sym(",")) {
        p.pos += 1;
        select.push(p.field()?);
    }
    p.expect_kw("FROM", "EXPECTED_FROM")?;
    let from = p.field()?;
    let mut conditions = Vec::new();
    if p.is_kw("WHERE") {
        p.pos += 1;
        loop {
            let field = p.field()?;
            let op = match p.next() {
                Some(Tok::Sym("=")) => Op::Eq(p.lit()?),
                Some(Tok::Sym("!=")) => Op::Ne(p.lit()?),
                Some(Tok::Sym("<")) => Op::Lt(p.lit()?),
                Some(Tok::Sym("<=")) => Op::Le(p.lit()?),
                Some(Tok::Sym(">")) => Op::Gt(p.lit()?),
                Some(Tok::Sym(">=")) => Op::Ge(p.lit()?),
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("IN") => Op::In(p.list()?),
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("NOT") => {
                    p.expect_kw("IN", "BAD_OPERATOR")?;
                    Op::NotIn(p.list()?)
                }
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("BETWEEN") => {
                    let a = p.lit()?;
                    p.expect_kw("AND", "EXPECTED_AND")?;
                    Op::Between(a, p.lit()?)
                }
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("DURING") => Op::During(p.field()?),
                Some(_) => {
                    return Err(err(
                        "BAD_OPERATOR",
                        format!("Unsupported operator after {field}"),
                    ))
                }
                None => return Err(err("UNEXPECTED_END_OF_QUERY", "Expected an operator")),
            };
            conditions.push(Cond { field, op });
            if p.is_kw("AND") {
                p.pos += 1;
            } else {
                break;
            }
        }
    }
    let mut order_by = Vec::new();
    if p.is_kw("ORDER") {
        p.pos += 1;
        p.expect_kw("BY", "EXPECTED_BY")?;
        loop {
            let f = p.field()?;
            let desc = if p.is_kw("DESC") {
                p.pos += 1;
                true
            } else {
                if p.is_kw("ASC") {
                    p.pos += 1;
                }
                false
            };
            order_by.push((f, desc));
            if p.peek() == Some(&Tok::Sym(",")) {
                p.pos += 1;
            } else {
                break;
            }
        }
    }
    let mut limit = None;
    if p.is_kw("LIMIT") {
        p.pos += 1;
        match p.next() {
            Some(Tok::Num(n)) if n >= 1.0 && n.fract() == 0.0 => limit = Some(n as usize),
            _ => return Err(err("BAD_LIMIT_VALUE", "LIMIT must be a positive integer")),
        }
    }
    if p.is_kw("PARAMETERS") {
        // e.g. PARAMETERS include_drafts=true: accepted and ignored.
        p.pos = p.toks.len();
    }
    if let Some(t) = p.peek() {
        return Err(err("UNEXPECTED_INPUT", format!("Unexpected input {t:?}")));
    }
    Ok(Query {
        select,
        from,
        conditions,
        order_by,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connector_queries() {
        let q = parse(
            "SELECT campaign.id, metrics.cost_micros, segments.date FROM campaign \
             WHERE segments.date BETWEEN '2024-07-01' AND '2024-07-31' AND campaign.status IN (ENABLED, 'PAUSED') \
             ORDER BY segments.date DESC, campaign.id LIMIT 10",
        )
        .unwrap();
        assert_eq!(q.select.len(), 3);
        assert_eq!(q.from, "campaign");
        assert_eq!(q.conditions.len(), 2);
        assert_eq!(
            q.order_by,
            vec![
                ("segments.date".into(), true),
                ("campaign.id".into(), false)
            ]
        );
        assert_eq!(q.limit, Some(10));
        let q = parse(
            "select customer_client.id from customer_client where customer_client.level <= 1",
        )
        .unwrap();
        assert_eq!(q.conditions[0].op, Op::Le(Lit::Num(1.0)));
    }

    #[test]
    fn reports_errors() {
        assert_eq!(
            parse("campaign.id FROM campaign").unwrap_err().code,
            "EXPECTED_SELECT"
        );
        assert_eq!(
            parse("SELECT campaign.id").unwrap_err().code,
            "EXPECTED_FROM"
        );
        assert_eq!(
            parse("SELECT a FROM b LIMIT x").unwrap_err().code,
            "BAD_LIMIT_VALUE"
        );
    }
}
