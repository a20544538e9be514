//! Kubernetes label selectors: parsing, matching cluster labels, and canonical printing.
//!
//! The grammar, the matching rules and the printed form follow Kubernetes'
//! `apimachinery/pkg/labels` (`labels.Parse(s).String()`), so a selector typed for `kubectl`
//! means the same here and prints the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::{NameError, validate_label_key, validate_label_value};

/// How a requirement relates a label to its values. Each keeps its own spelling (`=` vs
/// `==`) because Kubernetes prints them back as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value`
    DoubleEquals,
    /// `key!=value`: also matches when the label is absent.
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`: also matches when the label is absent.
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>5`: the label must be an integer greater than the value.
    GreaterThan,
    /// `key<5`: the label must be an integer less than the value.
    LessThan,
}

impl Operator {
    /// Kubernetes' name for the operator (`selection.Operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition on one label. Build with [`Requirement::new`] (or parse a selector) to get
/// the checks; `values` is sorted and free of duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A requirement that breaks Kubernetes' rules, before it is placed in a selector string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error(transparent)]
    Key(NameError),
    #[error(transparent)]
    Value(NameError),
    #[error("requirement on {key:?}: operator {operator} takes {expected}, got {got} value(s)")]
    ValueCount {
        key: String,
        operator: Operator,
        expected: &'static str,
        got: usize,
    },
    #[error(
        "requirement on {key:?}: value {value:?} after '{}' is not an integer; \
         '>' and '<' compare whole numbers, e.g. \"{key}>5\"",
        if *.operator == Operator::LessThan { "<" } else { ">" }
    )]
    NotInteger {
        key: String,
        operator: Operator,
        value: String,
    },
}

impl Requirement {
    /// Checks `key`, `values` and their count for `operator` as Kubernetes' `NewRequirement`
    /// does, then sorts and de-duplicates the values.
    pub fn new(
        key: impl Into<String>,
        operator: Operator,
        values: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Requirement, RequirementError> {
        let key = key.into();
        validate_label_key(&key).map_err(RequirementError::Key)?;
        let values: BTreeSet<String> = values.into_iter().map(Into::into).collect();
        let expected = match operator {
            Operator::In | Operator::NotIn if values.is_empty() => Some("at least one value"),
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => Some("no values"),
            Operator::Equals
            | Operator::DoubleEquals
            | Operator::NotEquals
            | Operator::GreaterThan
            | Operator::LessThan
                if values.len() != 1 =>
            {
                Some("exactly one value")
            }
            _ => None,
        };
        if let Some(expected) = expected {
            return Err(RequirementError::ValueCount {
                key,
                operator,
                expected,
                got: values.len(),
            });
        }
        for value in &values {
            validate_label_value(value).map_err(RequirementError::Value)?;
            if matches!(operator, Operator::GreaterThan | Operator::LessThan)
                && parse_int(value).is_none()
            {
                return Err(RequirementError::NotInteger {
                    key,
                    operator,
                    value: value.clone(),
                });
            }
        }
        Ok(Requirement {
            key,
            operator,
            values: values.into_iter().collect(),
        })
    }

    /// Whether `labels` satisfy this requirement, by Kubernetes' rules: `!=` and `notin`
    /// match an absent label; `>` and `<` need the label to be an integer.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(&self.key);
        let has_value = |v: &String| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                label.is_some_and(has_value)
            }
            Operator::NotEquals | Operator::NotIn => !label.is_some_and(has_value),
            Operator::Exists => label.is_some(),
            Operator::DoesNotExist => label.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), [want]) =
                    (label.and_then(|l| parse_int(l)), self.values.as_slice())
                else {
                    return false;
                };
                let Some(want) = parse_int(want) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// Go's `strconv.ParseInt(s, 10, 64)`: optional sign, decimal digits, 64-bit range — which
/// is also what Rust's `i64::from_str` accepts.
fn parse_int(s: &str) -> Option<i64> {
    s.parse().ok()
}

impl fmt::Display for Requirement {
    /// Kubernetes' `Requirement.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let values = || self.values.join(",");
        match self.operator {
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
            Operator::Equals => write!(f, "{key}={}", values()),
            Operator::DoubleEquals => write!(f, "{key}=={}", values()),
            Operator::NotEquals => write!(f, "{key}!={}", values()),
            Operator::GreaterThan => write!(f, "{key}>{}", values()),
            Operator::LessThan => write!(f, "{key}<{}", values()),
            Operator::In => write!(f, "{key} in ({})", values()),
            Operator::NotIn => write!(f, "{key} notin ({})", values()),
        }
    }
}

/// A selector string that Kubernetes would refuse. Positions count characters from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "selector {selector:?}: expected {expected} at position {position}, found {found}{hint}; \
         selectors look like \"region=europe,tier in (edge,store),!canary\""
    )]
    Syntax {
        selector: String,
        position: usize,
        /// What the grammar allows here.
        expected: &'static str,
        /// The token found instead, quoted, or "end of selector".
        found: String,
        /// Extra advice for a common mistake, starting with "; " (or empty).
        hint: &'static str,
    },
    #[error("selector {selector:?}: requirement at position {position}: {error}")]
    Requirement {
        selector: String,
        position: usize,
        error: RequirementError,
    },
}

/// A label selector: requirements that must all hold. The empty selector selects everything.
///
/// Requirements are kept sorted by key (stably), as Kubernetes keeps them, so that equal
/// selectors compare equal and print the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses Kubernetes' selector syntax (`a=b,c!=d,e in (f,g),h notin (i),j,!k,l>1,m<2`).
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Parser::new(s).parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// A selector of the given requirements, sorted by key.
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> LabelSelector {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector { requirements }
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical form, as Kubernetes' `Selector.String()` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// In messages a selector is its canonical string, as users and `kubectl` write it.
impl Serialize for LabelSelector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LabelSelector::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for LabelSelector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LabelSelector".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Kubernetes label selector, e.g. \"region=europe,tier in (edge,store),!canary\"; empty selects every cluster."
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `in` and `notin` are keywords only where an operator may stand; elsewhere they are
    /// ordinary keys or values, as in Kubernetes.
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Greater,
    Less,
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn describe(&self) -> String {
        let s = match self {
            Token::Ident(s) => return format!("{s:?}"),
            Token::End => return "end of selector".into(),
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::Bang => "!",
            Token::Greater => ">",
            Token::Less => "<",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
        };
        format!("{s:?}")
    }

    /// The token as it reads where a key or value is expected.
    fn as_value(&self) -> Token {
        match self {
            Token::In => Token::Ident("in".into()),
            Token::NotIn => Token::Ident("notin".into()),
            other => other.clone(),
        }
    }
}

/// Splits like Kubernetes' lexer: whitespace separates, `=!(),<>` are symbols (`!=` and `==`
/// are two-character symbols), and any other run of characters is one identifier.
fn lex(s: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = s.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let is_symbol = |c: char| matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<');
    // Kubernetes' whitespace set; other Unicode spaces end up inside identifiers and fail
    // validation there, as they do in Kubernetes.
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    while i < chars.len() {
        let c = chars[i];
        if is_space(c) {
            i += 1;
            continue;
        }
        let start = i;
        let next = chars.get(i + 1).copied();
        let token = match (c, next) {
            ('!', Some('=')) | ('=', Some('=')) => {
                i += 2;
                if c == '!' {
                    Token::NotEquals
                } else {
                    Token::DoubleEquals
                }
            }
            _ if is_symbol(c) => {
                i += 1;
                match c {
                    '=' => Token::Equals,
                    '!' => Token::Bang,
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    '>' => Token::Greater,
                    _ => Token::Less,
                }
            }
            _ => {
                while i < chars.len() && !is_symbol(chars[i]) && !is_space(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Ident(word),
                }
            }
        };
        tokens.push((token, start));
    }
    tokens.push((Token::End, chars.len()));
    tokens
}

/// Recursive descent over the tokens, mirroring Kubernetes' parser decision by decision so
/// that the same strings are accepted.
struct Parser<'a> {
    source: &'a str,
    tokens: Vec<(Token, usize)>,
    next: usize,
}

impl<'a> Parser<'a> {
    fn new(source: &'a str) -> Self {
        Parser {
            source,
            tokens: lex(source),
            next: 0,
        }
    }

    /// The next token as a key or value (keywords read as identifiers), not consumed.
    fn peek(&self) -> Token {
        self.tokens[self.next].0.as_value()
    }

    fn position(&self) -> usize {
        self.tokens[self.next].1
    }

    /// Consumes the next token; `keywords` keeps `in`/`notin` as operators.
    fn take(&mut self, keywords: bool) -> (Token, usize) {
        let (token, at) = self.tokens[self.next].clone();
        // The End token stays put so that peeking after the end is harmless.
        if token != Token::End {
            self.next += 1;
        }
        (if keywords { token } else { token.as_value() }, at)
    }

    fn syntax(
        &self,
        expected: &'static str,
        found: &Token,
        position: usize,
        hint: &'static str,
    ) -> SelectorError {
        SelectorError::Syntax {
            selector: self.source.to_owned(),
            position,
            expected,
            found: found.describe(),
            hint,
        }
    }

    fn parse(mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            match self.peek() {
                Token::End => return Ok(requirements),
                Token::Ident(_) | Token::Bang => {}
                other => {
                    let hint = if other == Token::Comma {
                        "; remove the extra ','"
                    } else {
                        ""
                    };
                    return Err(self.syntax("a label key or '!'", &other, self.position(), hint));
                }
            }
            requirements.push(self.requirement()?);
            match self.take(false) {
                (Token::End, _) => return Ok(requirements),
                (Token::Comma, _) => {
                    if !matches!(self.peek(), Token::Ident(_) | Token::Bang) {
                        let hint = if self.peek() == Token::End {
                            "; remove the trailing ','"
                        } else {
                            ""
                        };
                        return Err(self.syntax(
                            "a label key or '!' after ','",
                            &self.peek(),
                            self.position(),
                            hint,
                        ));
                    }
                }
                (other, at) => {
                    let hint = if other == Token::Open {
                        "; write sets as \"key in (a,b)\""
                    } else {
                        ""
                    };
                    return Err(self.syntax("',' or end of selector", &other, at, hint));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (mut token, mut at) = self.take(false);
        let negated = token == Token::Bang;
        if negated {
            (token, at) = self.take(false);
        }
        let Token::Ident(key) = token else {
            return Err(self.syntax("a label key", &token, at, ""));
        };
        let key_at = at;
        validate_label_key(&key).map_err(|e| self.invalid(key_at, RequirementError::Key(e)))?;
        if matches!(self.peek(), Token::End | Token::Comma) {
            let operator = if negated {
                Operator::DoesNotExist
            } else {
                Operator::Exists
            };
            return Ok(Requirement {
                key,
                operator,
                values: Vec::new(),
            });
        }
        if negated {
            // Kubernetes rejects `!key=value` too; say what was probably meant.
            return Err(self.syntax(
                "',' or end of selector after \"!key\"",
                &self.peek(),
                self.position(),
                "; \"!key\" selects clusters without the label — to exclude a value write \"key!=value\"",
            ));
        }
        let (op_token, op_at) = self.take(true);
        let operator = match op_token {
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::Greater => Operator::GreaterThan,
            Token::Less => Operator::LessThan,
            other => {
                return Err(self.syntax(
                    "an operator (=, ==, !=, in, notin, >, <)",
                    &other,
                    op_at,
                    "",
                ));
            }
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => self.exact_value()?,
        };
        Requirement::new(key, operator, values).map_err(|e| self.invalid(key_at, e))
    }

    fn invalid(&self, position: usize, error: RequirementError) -> SelectorError {
        SelectorError::Requirement {
            selector: self.source.to_owned(),
            position,
            error,
        }
    }

    /// `( values )`, where `()` and empty items stand for the empty value, as in Kubernetes.
    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (token, at) = self.take(false);
        if token != Token::Open {
            return Err(self.syntax(
                "'(' after in/notin",
                &token,
                at,
                "; write sets as \"key in (a,b)\"",
            ));
        }
        let values = match self.peek() {
            Token::Close => BTreeSet::from([String::new()]),
            Token::Ident(_) | Token::Comma => self.value_list()?,
            other => return Err(self.syntax("a value, ',' or ')'", &other, self.position(), "")),
        };
        match self.take(false) {
            (Token::Close, _) => Ok(values),
            (other, at) => Err(self.syntax("')' or ','", &other, at, "")),
        }
    }

    /// Comma-separated, possibly empty values; stops before `)`.
    fn value_list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let mut values = BTreeSet::new();
        loop {
            match self.take(false) {
                (Token::Ident(v), _) => {
                    values.insert(v);
                    match self.peek() {
                        Token::Comma => {}
                        Token::Close => return Ok(values),
                        other => {
                            return Err(self.syntax("')' or ','", &other, self.position(), ""));
                        }
                    }
                }
                (Token::Comma, _) => {
                    // A leading, doubled or trailing comma stands for the empty value.
                    if values.is_empty() {
                        values.insert(String::new());
                    }
                    match self.peek() {
                        Token::Close => {
                            values.insert(String::new());
                            return Ok(values);
                        }
                        Token::Comma => {
                            values.insert(String::new());
                        }
                        _ => {}
                    }
                }
                (other, at) => return Err(self.syntax("a value or ','", &other, at, "")),
            }
        }
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`; nothing before `,` or the end means "".
    fn exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.take(false) {
            (Token::Ident(v), _) => Ok(BTreeSet::from([v])),
            (other, at) => Err(self.syntax("a value", &other, at, "")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn canonical(s: &str) -> String {
        LabelSelector::parse(s)
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
            .to_string()
    }

    fn reqs(s: &str) -> Vec<(String, Operator, Vec<String>)> {
        LabelSelector::parse(s)
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
            .requirements()
            .iter()
            .map(|r| (r.key.clone(), r.operator, r.values.clone()))
            .collect()
    }

    fn req(key: &str, op: Operator, values: &[&str]) -> (String, Operator, Vec<String>) {
        (
            key.to_owned(),
            op,
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    #[test]
    fn examples_users_type() {
        assert_eq!(
            reqs("Region=Europe"),
            vec![req("Region", Operator::Equals, &["Europe"])]
        );
        assert_eq!(
            reqs("Kubecon=True"),
            vec![req("Kubecon", Operator::Equals, &["True"])]
        );
        assert_eq!(reqs("ID=123"), vec![req("ID", Operator::Equals, &["123"])]);
        assert_eq!(
            reqs("tier in (edge,store)"),
            vec![req("tier", Operator::In, &["edge", "store"])]
        );
        assert_eq!(
            reqs("!canary"),
            vec![req("canary", Operator::DoesNotExist, &[])]
        );
        assert_eq!(
            reqs("env notin (dev, test), gpu"),
            vec![
                req("env", Operator::NotIn, &["dev", "test"]),
                req("gpu", Operator::Exists, &[])
            ]
        );
    }

    /// Cases from Kubernetes' `TestSelectorParse`/`TestToString` and more, with the strings
    /// `labels.Parse(s).String()` prints (checked against k8s.io/apimachinery v0.36.2).
    #[test]
    fn canonical_strings_match_kubernetes() {
        let cases = [
            ("", ""),
            ("x=a,y=b,z=c", "x=a,y=b,z=c"),
            ("z=c,y=b,x=a", "x=a,y=b,z=c"),
            ("x!=a,y=b", "x!=a,y=b"),
            ("x=,z= ", "x=,z="),
            ("x= ,z= ", "x=,z="),
            ("!x", "!x"),
            ("x>1", "x>1"),
            ("x<1", "x<1"),
            ("y<1,x>1", "x>1,y<1"),
            ("x in (a,b)", "x in (a,b)"),
            ("x in (b,a,b)", "x in (a,b)"),
            ("x notin (a , b)", "x notin (a,b)"),
            ("x in (,a)", "x in (,a)"),
            ("x in (a,)", "x in (,a)"),
            ("x in (a,,b)", "x in (,a,b)"),
            ("x in ()", "x in ()"),
            ("x notin ()", "x notin ()"),
            ("x in(a)", "x in (a)"),
            ("x  in  ( a )", "x in (a)"),
            ("\tx\n=\ra", "x=a"),
            ("x=a,x!=b", "x=a,x!=b"),
            ("x!=b,x=a", "x!=b,x=a"),
            ("in in (in)", "in in (in)"),
            ("notin=notin", "notin=notin"),
            ("x in (in,notin)", "x in (in,notin)"),
            ("a.b/c", "a.b/c"),
            ("x=a,!y,z", "x=a,!y,z"),
            // Kubernetes 1.36 reads a doubled comma as one more empty value (1.34 refused
            // "(a,,)"); we follow the current release.
            ("x in (a,,)", "x in (,a)"),
            ("x in (,,)", "x in ()"),
            ("env notin (dev, test), gpu", "env notin (dev,test),gpu"),
        ];
        for (input, want) in cases {
            assert_eq!(canonical(input), want, "input {input:?}");
        }
    }

    /// Each of these is refused by k8s.io/apimachinery v0.36.2 as well.
    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "x==a==b",
            "x=a||y=b",
            "x<a",
            "x,y,",
            ",x,y",
            "x nott in (y)",
            "a in (xyz),",
            "a in (xyz)b notin ()",
            "a in (xyz abc)",
            "a notin(",
            "a (",
            "(",
            "x=a,",
            ",x=a",
            ",",
            "x==a,,y=b",
            "x=a b",
            "x in a",
            "x in (a",
            "x in (a b)",
            "x in (",
            "x in (,",
            "x notin",
            "x in",
            "!x=a",
            "!x in (a)",
            "!",
            "!!x",
            "x y",
            "x=(a)",
            "x=!a",
            "x>",
            "x>a",
            "x>1.5",
            "x>-1",
            "x>99999999999999999999",
            "x<a,b",
            "(x)",
            ")",
            "x=a)",
            "x=a(",
            "=a",
            "Bad@Key=x",
            "-x=a",
            "x=-a",
            "x=a b c",
            "x=a/b",
            "a/b/c=x",
        ] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn syntax_errors_say_what_and_where() {
        let e = LabelSelector::parse("tier in (edge").unwrap_err();
        assert_eq!(
            e,
            SelectorError::Syntax {
                selector: "tier in (edge".into(),
                position: 13,
                expected: "')' or ','",
                found: "end of selector".into(),
                hint: "",
            }
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("selector \"tier in (edge\": expected ')' or ',' at position 13, found end of selector"),
            "{msg}"
        );
        assert!(msg.contains("selectors look like"), "{msg}");

        let msg = LabelSelector::parse("x=a,").unwrap_err().to_string();
        assert!(
            msg.contains("at position 4, found end of selector; remove the trailing ','"),
            "{msg}"
        );

        let msg = LabelSelector::parse("!x=a").unwrap_err().to_string();
        assert!(msg.contains("at position 2, found \"=\""), "{msg}");
        assert!(msg.contains("write \"key!=value\""), "{msg}");

        let msg = LabelSelector::parse("x y").unwrap_err().to_string();
        assert!(
            msg.contains(
                "expected an operator (=, ==, !=, in, notin, >, <) at position 2, found \"y\""
            ),
            "{msg}"
        );

        let msg = LabelSelector::parse("x in a").unwrap_err().to_string();
        assert!(
            msg.contains("expected '(' after in/notin at position 5, found \"a\""),
            "{msg}"
        );

        // Positions count characters, not bytes.
        let e = LabelSelector::parse("é=a b").unwrap_err();
        assert!(
            matches!(e, SelectorError::Requirement { position: 0, .. }),
            "{e:?}"
        );
        let e = LabelSelector::parse("a=é b").unwrap_err();
        assert!(
            matches!(e, SelectorError::Requirement { position: 0, .. }),
            "{e:?}"
        );
        let e = LabelSelector::parse("a=b é").unwrap_err();
        assert!(
            matches!(e, SelectorError::Syntax { position: 4, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_keys_and_values_are_reported_with_names_rules() {
        let msg = LabelSelector::parse("tier=edge,Bad@Key=x")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("selector \"tier=edge,Bad@Key=x\": requirement at position 10: label key \"Bad@Key\" is invalid: character '@' at position 3"),
            "{msg}"
        );
        let msg = LabelSelector::parse("x in (a,b_)").unwrap_err().to_string();
        assert!(msg.contains("label value \"b_\" is invalid"), "{msg}");
        let e = LabelSelector::parse("x>a").unwrap_err();
        assert!(
            matches!(&e, SelectorError::Requirement { error: RequirementError::NotInteger { value, .. }, .. } if value == "a"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("value \"a\" after '>' is not an integer"),
            "{e}"
        );
        // `-1` is not a valid label value, so Kubernetes rejects it before the integer check.
        let e = LabelSelector::parse("x>-1").unwrap_err();
        assert!(
            matches!(
                &e,
                SelectorError::Requirement {
                    error: RequirementError::Value(_),
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "  ", "\t\n"] {
            let sel = LabelSelector::parse(s).unwrap();
            assert!(sel.is_empty());
            assert!(sel.matches(&labels(&[])));
            assert!(sel.matches(&labels(&[("a", "b")])));
            assert_eq!(sel.to_string(), "");
        }
        assert!(!LabelSelector::parse("a").unwrap().is_empty());
        assert!(LabelSelector::default().is_empty());
    }

    #[test]
    fn matching_follows_kubernetes() {
        let l = labels(&[
            ("Region", "Europe"),
            ("tier", "edge"),
            ("ID", "123"),
            ("gpu", ""),
            ("n", "5"),
        ]);
        let cases = [
            ("Region=Europe", true),
            ("Region==Europe", true),
            ("Region=europe", false),
            ("region=Europe", false),
            ("Region!=Europe", false),
            ("Region!=Asia", true),
            ("absent!=x", true),
            ("absent=x", false),
            ("absent=", false),
            ("gpu=", true),
            ("gpu", true),
            ("!gpu", false),
            ("absent", false),
            ("!absent", true),
            ("tier in (edge,store)", true),
            ("tier in (store)", false),
            ("absent in (a)", false),
            ("tier notin (edge)", false),
            ("tier notin (store)", true),
            ("absent notin (a)", true),
            ("gpu in ()", true),
            ("gpu notin ()", false),
            ("ID>122", true),
            ("ID>123", false),
            ("ID<124", true),
            ("ID<123", false),
            ("n>4,n<6", true),
            ("absent>1", false),
            ("absent<1", false),
            ("tier>1", false),
            ("tier<1", false),
            ("Region=Europe,tier in (edge),!canary", true),
            ("Region=Europe,tier in (edge),canary", false),
        ];
        for (s, want) in cases {
            assert_eq!(LabelSelector::parse(s).unwrap().matches(&l), want, "{s:?}");
        }
    }

    #[test]
    fn integer_comparison_reads_labels_like_go() {
        let sel = LabelSelector::parse("v>5").unwrap();
        assert!(sel.matches(&labels(&[("v", "+6")])));
        assert!(sel.matches(&labels(&[("v", "007")])));
        assert!(!sel.matches(&labels(&[("v", "-6")])));
        assert!(!sel.matches(&labels(&[("v", " 6")])));
        assert!(!sel.matches(&labels(&[("v", "6.0")])));
        assert!(!sel.matches(&labels(&[("v", "99999999999999999999")])));
        assert!(
            LabelSelector::parse("v<0")
                .unwrap()
                .matches(&labels(&[("v", "-9223372036854775808")]))
        );
    }

    #[test]
    fn requirement_new_checks_like_new_requirement() {
        let none: [&str; 0] = [];
        assert!(Requirement::new("a", Operator::In, none).is_err());
        assert!(Requirement::new("a", Operator::Exists, ["x"]).is_err());
        assert!(Requirement::new("a", Operator::Equals, ["x", "y"]).is_err());
        assert!(Requirement::new("a", Operator::GreaterThan, ["x"]).is_err());
        assert!(Requirement::new("a b", Operator::Exists, none).is_err());
        let r = Requirement::new("a", Operator::In, ["c", "b", "c"]).unwrap();
        assert_eq!(r.values, vec!["b", "c"]);
        assert_eq!(r.to_string(), "a in (b,c)");
        let e = Requirement::new("a", Operator::Equals, ["x", "y"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "requirement on \"a\": operator = takes exactly one value, got 2 value(s)"
        );
        let sel = LabelSelector::from_requirements(vec![
            r,
            Requirement::new("0", Operator::Exists, none).unwrap(),
        ]);
        assert_eq!(sel.to_string(), "0,a in (b,c)");
    }

    #[test]
    fn operators_print_kubernetes_names() {
        let names: Vec<&str> = [
            Operator::Equals,
            Operator::DoubleEquals,
            Operator::NotEquals,
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
            Operator::GreaterThan,
            Operator::LessThan,
        ]
        .iter()
        .map(|o| o.as_str())
        .collect();
        assert_eq!(
            names,
            ["=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"]
        );
    }

    #[test]
    fn from_str_and_serde_use_the_canonical_string() {
        let sel: LabelSelector = "tier in (store,edge), Region=Europe".parse().unwrap();
        assert_eq!(
            serde_json::to_string(&sel).unwrap(),
            r#""Region=Europe,tier in (edge,store)""#
        );
        let back: LabelSelector =
            serde_json::from_str(r#""Region=Europe,tier in (edge,store)""#).unwrap();
        assert_eq!(back, sel);
        let err = serde_json::from_str::<LabelSelector>(r#""x in (a""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected ')' or ','"), "{err}");
    }

    /// Random selectors built from grammar fragments (valid and invalid): whatever parses
    /// must print a string that parses back to the same selector and prints identically.
    #[test]
    fn display_round_trips_for_generated_selectors() {
        const PIECES: &[&str] = &[
            "a", "b", "x.io/k", "in", "notin", "V", "1", "12", "", " ", "=", "==", "!=", "!", "in",
            "notin", ">", "<", "(", ")", ",", ",", "-", "a_b", "\t",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64*: deterministic, no dependency.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut parsed = 0;
        for _ in 0..20_000 {
            let n = 1 + (next() % 9) as usize;
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                if next() % 2 == 0 {
                    s.push(' ');
                }
            }
            if let Ok(sel) = LabelSelector::parse(&s) {
                parsed += 1;
                let printed = sel.to_string();
                let again = LabelSelector::parse(&printed).unwrap_or_else(|e| {
                    panic!("{s:?} printed as {printed:?}, which does not parse: {e}")
                });
                assert_eq!(again, sel, "{s:?} -> {printed:?}");
                assert_eq!(again.to_string(), printed);
            }
        }
        assert!(
            parsed > 1_000,
            "only {parsed} generated selectors parsed; the generator is too weak"
        );
    }
}
