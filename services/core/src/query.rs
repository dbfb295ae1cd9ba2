//! List queries (AIP-132/158/160): `filter` and `order_by` parsed against a whitelist of
//! fields and compiled to SQL with bound arguments, and keyset pagination on the ordering.
//!
//! Filter grammar (a practical subset of AIP-160):
//!
//! ```text
//! expr       := or
//! or         := and { "OR" and }
//! and        := unary { ["AND"] unary }          (juxtaposition means AND)
//! unary      := ("NOT" | "-") unary | "(" expr ")" | comparison
//! comparison := field op value
//! field      := name { "." name }                (maps: attributes.tier)
//! op         := "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//! value      := "quoted string" | 'quoted' | bare-word
//! ```
//!
//! `:` (has) is a case-insensitive substring match on text. `=` on text with a leading or
//! trailing `*` is a prefix or suffix match.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::{Arg, Engine, Sql};
use crate::error::Error;

const MAX_FILTER_LEN: usize = 2000;
const MAX_COMPARISONS: usize = 50;
const MAX_DEPTH: usize = 16;

/// How a field's values are interpreted.
#[derive(Clone, Copy)]
pub enum FieldKind {
    Text,
    /// An enum stored by its short name; the function maps an accepted spelling (short or
    /// fully prefixed) to the stored name.
    Enum(fn(&str) -> Option<&'static str>),
    Timestamp,
    /// A 64-bit integer (amounts in minor units).
    Integer,
    Uuid,
    /// A string map stored as JSON; filtered as `field.key`.
    Map,
    /// Personal data sealed at rest ([`crate::crypto`]): filtered by exact `=` and `!=`
    /// only, through the keyed blind index in `column` that a [`Blind`] computes; ordered
    /// in memory by the store that opens it, never by SQL.
    Sealed,
}

/// The blind index of a filter's value for a sealed field: (proto field name, value) →
/// what the field's index column holds for an equal value.
pub type Blind<'a> = &'a (dyn Fn(&str, &str) -> String + Sync);

/// A field that may appear in `filter` or `order_by`.
#[derive(Clone, Copy)]
pub struct Field {
    /// The proto field name.
    pub name: &'static str,
    /// The column.
    pub column: &'static str,
    pub kind: FieldKind,
    /// Whether `order_by` accepts it.
    pub sortable: bool,
}

impl Field {
    /// A field stored in the column of its own name.
    pub const fn new(name: &'static str, kind: FieldKind, sortable: bool) -> Self {
        Self {
            name,
            column: name,
            kind,
            sortable,
        }
    }

    /// The field stored in `column` instead.
    pub const fn in_column(self, column: &'static str) -> Self {
        Self { column, ..self }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Has,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Eq | Op::Has => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

#[derive(Debug)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        field: String,
        op: Op,
        value: String,
    },
}

fn filter_error(message: impl Into<String>) -> Error {
    Error::invalid("filter", message)
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
    comparisons: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.position..]
    }

    fn skip_whitespace(&mut self) {
        let trimmed = self.rest().trim_start();
        self.position = self.text.len() - trimmed.len();
    }

    fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.rest().is_empty()
    }

    /// Consumes `keyword` if it is the next word (followed by whitespace or a parenthesis).
    fn keyword(&mut self, keyword: &str) -> bool {
        self.skip_whitespace();
        let rest = self.rest();
        if let Some(after) = rest.strip_prefix(keyword)
            && (after.is_empty()
                || after.starts_with(char::is_whitespace)
                || after.starts_with('('))
        {
            self.position += keyword.len();
            return true;
        }
        false
    }

    fn symbol(&mut self, symbol: char) -> bool {
        self.skip_whitespace();
        if self.rest().starts_with(symbol) {
            self.position += symbol.len_utf8();
            return true;
        }
        false
    }

    fn parse_or(&mut self, depth: usize) -> Result<Expr, Error> {
        let mut terms = vec![self.parse_and(depth)?];
        while self.keyword("OR") {
            terms.push(self.parse_and(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn parse_and(&mut self, depth: usize) -> Result<Expr, Error> {
        let mut terms = vec![self.parse_unary(depth)?];
        loop {
            if self.keyword("AND") {
                terms.push(self.parse_unary(depth)?);
                continue;
            }
            // Juxtaposition is AND, unless the next token closes a group or starts OR.
            self.skip_whitespace();
            let rest = self.rest();
            if rest.is_empty()
                || rest.starts_with(')')
                || rest.starts_with("OR ")
                || rest.starts_with("OR(")
            {
                break;
            }
            terms.push(self.parse_unary(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Expr, Error> {
        if depth > MAX_DEPTH {
            return Err(filter_error("nested too deeply"));
        }
        if self.keyword("NOT") || self.symbol('-') {
            return Ok(Expr::Not(Box::new(self.parse_unary(depth + 1)?)));
        }
        if self.symbol('(') {
            let inner = self.parse_or(depth + 1)?;
            if !self.symbol(')') {
                return Err(filter_error(format!(
                    "missing ')' at position {}",
                    self.position
                )));
            }
            return Ok(inner);
        }
        self.parse_comparison()
    }

    fn parse_comparison(&mut self) -> Result<Expr, Error> {
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(filter_error(format!(
                "more than {MAX_COMPARISONS} comparisons"
            )));
        }
        self.skip_whitespace();
        let start = self.position;
        let field_len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(self.rest().len());
        if field_len == 0 {
            return Err(filter_error(format!(
                "expected a field name at position {start}"
            )));
        }
        let field = self.rest()[..field_len].to_owned();
        self.position += field_len;
        self.skip_whitespace();
        let rest = self.rest();
        let (op, op_len) = if rest.starts_with("!=") {
            (Op::Ne, 2)
        } else if rest.starts_with("<=") {
            (Op::Le, 2)
        } else if rest.starts_with(">=") {
            (Op::Ge, 2)
        } else if rest.starts_with('=') {
            (Op::Eq, 1)
        } else if rest.starts_with('<') {
            (Op::Lt, 1)
        } else if rest.starts_with('>') {
            (Op::Gt, 1)
        } else if rest.starts_with(':') {
            (Op::Has, 1)
        } else {
            return Err(filter_error(format!(
                "expected an operator (= != < <= > >= :) after '{field}'"
            )));
        };
        self.position += op_len;
        self.skip_whitespace();
        let value = self.parse_value(&field)?;
        Ok(Expr::Compare { field, op, value })
    }

    fn parse_value(&mut self, field: &str) -> Result<String, Error> {
        let rest = self.rest();
        let Some(first) = rest.chars().next() else {
            return Err(filter_error(format!("missing value for '{field}'")));
        };
        if first == '"' || first == '\'' {
            let mut value = String::new();
            let mut chars = rest[1..].char_indices();
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => value.push(escaped),
                        None => break,
                    },
                    c if c == first => {
                        self.position += 1 + index + 1;
                        return Ok(value);
                    }
                    c => value.push(c),
                }
            }
            return Err(filter_error(format!("unterminated string for '{field}'")));
        }
        let len = rest
            .find(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(filter_error(format!("missing value for '{field}'")));
        }
        self.position += len;
        Ok(rest[..len].to_owned())
    }
}

/// The parsed `filter`; `None` when it is empty.
fn parse_filter(filter: &str) -> Result<Option<Expr>, Error> {
    if filter.trim().is_empty() {
        return Ok(None);
    }
    if filter.len() > MAX_FILTER_LEN {
        return Err(filter_error(format!(
            "longer than {MAX_FILTER_LEN} characters"
        )));
    }
    let mut parser = Parser {
        text: filter,
        position: 0,
        comparisons: 0,
    };
    let expr = parser.parse_or(0)?;
    if !parser.at_end() {
        return Err(filter_error(format!(
            "unexpected '{}' at position {}",
            parser.rest().chars().take(20).collect::<String>(),
            parser.position
        )));
    }
    Ok(Some(expr))
}

/// Parses `filter` and appends ` AND (<condition>)` to `sql`. An empty filter adds nothing.
pub fn push_filter(
    sql: &mut Sql,
    engine: Engine,
    filter: &str,
    fields: &[Field],
) -> Result<(), Error> {
    push_filter_blind(sql, engine, filter, fields, None)
}

/// [`push_filter`] over fields of which some are [`FieldKind::Sealed`]: `blind` gives
/// their values' blind indexes.
pub fn push_filter_blind(
    sql: &mut Sql,
    engine: Engine,
    filter: &str,
    fields: &[Field],
    blind: Option<Blind<'_>>,
) -> Result<(), Error> {
    let Some(expr) = parse_filter(filter)? else {
        return Ok(());
    };
    sql.push(" AND (");
    compile(sql, engine, &expr, fields, blind)?;
    sql.push(")");
    Ok(())
}

/// Refuses a filter or an ordering on a field the caller may not see (`hidden`, by proto
/// name): INVALID_ARGUMENT on `filter` or `order_by` naming the field. A caller who may not
/// read e-mail addresses must not be able to probe them either (`email = "a*"` and
/// `totalSize`), nor learn their order.
pub fn refuse_hidden(filter: &str, order: &[OrderTerm], hidden: &[&str]) -> Result<(), Error> {
    if hidden.is_empty() {
        return Ok(());
    }
    let refused = |field: &str, what: &str| {
        format!("'{field}' is hidden from your role, so it cannot be {what}")
    };
    if let Some(term) = order.iter().find(|term| hidden.contains(&term.field.name)) {
        return Err(Error::invalid(
            "order_by",
            refused(term.field.name, "ordered by"),
        ));
    }
    fn first_hidden<'e>(expr: &'e Expr, hidden: &[&str]) -> Option<&'e str> {
        match expr {
            Expr::And(terms) | Expr::Or(terms) => {
                terms.iter().find_map(|term| first_hidden(term, hidden))
            }
            Expr::Not(inner) => first_hidden(inner, hidden),
            Expr::Compare { field, .. } => {
                let base = field.split('.').next().unwrap_or(field);
                hidden.contains(&base).then_some(base)
            }
        }
    }
    if let Some(expr) = parse_filter(filter)?
        && let Some(field) = first_hidden(&expr, hidden)
    {
        return Err(Error::invalid("filter", refused(field, "filtered on")));
    }
    Ok(())
}

fn compile(
    sql: &mut Sql,
    engine: Engine,
    expr: &Expr,
    fields: &[Field],
    blind: Option<Blind<'_>>,
) -> Result<(), Error> {
    match expr {
        Expr::And(terms) | Expr::Or(terms) => {
            let joiner = if matches!(expr, Expr::And(_)) {
                " AND "
            } else {
                " OR "
            };
            for (index, term) in terms.iter().enumerate() {
                if index > 0 {
                    sql.push(joiner);
                }
                sql.push("(");
                compile(sql, engine, term, fields, blind)?;
                sql.push(")");
            }
            Ok(())
        }
        Expr::Not(inner) => {
            sql.push("NOT (");
            compile(sql, engine, inner, fields, blind)?;
            sql.push(")");
            Ok(())
        }
        Expr::Compare { field, op, value } => {
            compile_comparison(sql, engine, field, *op, value, fields, blind)
        }
    }
}

fn field_names(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|field| match field.kind {
            FieldKind::Map => format!("{}.<key>", field.name),
            _ => field.name.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn compile_comparison(
    sql: &mut Sql,
    engine: Engine,
    name: &str,
    op: Op,
    value: &str,
    fields: &[Field],
    blind: Option<Blind<'_>>,
) -> Result<(), Error> {
    let (base, key) = match name.split_once('.') {
        Some((base, key)) => (base, Some(key)),
        None => (name, None),
    };
    let field = fields
        .iter()
        .find(|field| field.name == base)
        .ok_or_else(|| {
            filter_error(format!(
                "unknown field '{name}'; known: {}",
                field_names(fields)
            ))
        })?;
    match (field.kind, key) {
        (FieldKind::Map, Some(key)) => {
            if key.is_empty()
                || key.len() > 64
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(filter_error(format!("bad key '{key}' in '{name}'")));
            }
            let column = match engine {
                Engine::Postgres => format!("({} ->> '{key}')", field.column),
                Engine::Sqlite => format!("json_extract({}, '$.\"{key}\"')", field.column),
            };
            push_text_comparison(sql, &column, op, value);
            Ok(())
        }
        (FieldKind::Map, None) => Err(filter_error(format!(
            "'{name}' needs a key, e.g. {name}.tier"
        ))),
        (_, Some(_)) => Err(filter_error(format!("'{base}' has no sub-fields"))),
        (FieldKind::Text, None) => {
            push_text_comparison(sql, field.column, op, value);
            Ok(())
        }
        (FieldKind::Sealed, None) => {
            let exact = matches!(op, Op::Eq | Op::Ne)
                && !(value.len() > 1 && (value.starts_with('*') || value.ends_with('*')));
            if !exact {
                return Err(filter_error(format!(
                    "'{name}' is encrypted at rest: it is filtered by exact = or != only"
                )));
            }
            let blind = blind.ok_or_else(|| {
                Error::internal(format!("no blind index for the sealed field {name}"))
            })?;
            sql.push(field.column).push(" ").push(op.sql()).push(" ");
            sql.push_arg(blind(name, value));
            Ok(())
        }
        (FieldKind::Enum(normalize), None) => {
            let op = match op {
                Op::Eq | Op::Has => Op::Eq,
                Op::Ne => Op::Ne,
                _ => return Err(filter_error(format!("'{name}' supports only = and !="))),
            };
            let stored = normalize(value).ok_or_else(|| {
                filter_error(format!("'{value}' is not a valid value of '{name}'"))
            })?;
            sql.push(field.column).push(" ").push(op.sql()).push(" ");
            sql.push_arg(stored);
            Ok(())
        }
        (FieldKind::Timestamp, None) => {
            if op == Op::Has {
                return Err(filter_error(format!(
                    "':' does not apply to timestamp '{name}'"
                )));
            }
            let time = DateTime::parse_from_rfc3339(value)
                .map_err(|_| {
                    filter_error(format!(
                        "'{value}' is not an RFC 3339 timestamp (for '{name}')"
                    ))
                })?
                .with_timezone(&Utc);
            sql.push(field.column).push(" ").push(op.sql()).push(" ");
            sql.push_arg(time);
            Ok(())
        }
        (FieldKind::Integer, None) => {
            if op == Op::Has {
                return Err(filter_error(format!(
                    "':' does not apply to number '{name}'"
                )));
            }
            let number: i64 = value
                .parse()
                .map_err(|_| filter_error(format!("'{value}' is not an integer (for '{name}')")))?;
            sql.push(field.column).push(" ").push(op.sql()).push(" ");
            sql.push_arg(number);
            Ok(())
        }
        (FieldKind::Uuid, None) => {
            let op = match op {
                Op::Eq | Op::Has => Op::Eq,
                Op::Ne => Op::Ne,
                _ => return Err(filter_error(format!("'{name}' supports only = and !="))),
            };
            let id = Uuid::parse_str(value)
                .map_err(|_| filter_error(format!("'{value}' is not an id (for '{name}')")))?;
            sql.push(field.column).push(" ").push(op.sql()).push(" ");
            sql.push_arg(id);
            Ok(())
        }
    }
}

fn push_text_comparison(sql: &mut Sql, column: &str, op: Op, value: &str) {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    match op {
        Op::Has => {
            sql.push("LOWER(").push(column).push(") LIKE ");
            sql.push_arg(format!("%{}%", escaped.to_lowercase()));
            sql.push(" ESCAPE '\\'");
        }
        Op::Eq | Op::Ne if value.len() > 1 && (value.starts_with('*') || value.ends_with('*')) => {
            let pattern = format!(
                "{}{}{}",
                if value.starts_with('*') { "%" } else { "" },
                escaped.trim_matches('*'),
                if value.ends_with('*') { "%" } else { "" }
            );
            sql.push(column)
                .push(if op == Op::Ne { " NOT LIKE " } else { " LIKE " });
            sql.push_arg(pattern);
            sql.push(" ESCAPE '\\'");
        }
        _ => {
            sql.push(column).push(" ").push(op.sql()).push(" ");
            sql.push_arg(value);
        }
    }
}

/// One `order_by` term.
#[derive(Clone, Copy)]
pub struct OrderTerm {
    pub field: Field,
    pub descending: bool,
}

impl OrderTerm {
    /// A fixed sort key of a list that takes no `order_by` (suppressions by address,
    /// grants by agent, action and segment, a ledger newest first).
    pub const fn key(column: &'static str, kind: FieldKind, descending: bool) -> Self {
        Self {
            field: Field {
                name: column,
                column,
                kind,
                sortable: true,
            },
            descending,
        }
    }
}

/// Parses `order_by` (`"create_time desc, email"`); empty means `default`.
pub fn parse_order_by(
    order_by: &str,
    fields: &[Field],
    default: &str,
) -> Result<Vec<OrderTerm>, Error> {
    let text = if order_by.trim().is_empty() {
        default
    } else {
        order_by
    };
    let mut terms = Vec::new();
    for part in text.split(',') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (name, descending) = match words.as_slice() {
            [name] => (*name, false),
            [name, direction] if direction.eq_ignore_ascii_case("desc") => (*name, true),
            [name, direction] if direction.eq_ignore_ascii_case("asc") => (*name, false),
            _ => {
                return Err(Error::invalid(
                    "order_by",
                    format!("cannot read '{}'", part.trim()),
                ));
            }
        };
        let field = fields
            .iter()
            .find(|field| field.name == name && field.sortable)
            .ok_or_else(|| {
                let sortable: Vec<&str> = fields
                    .iter()
                    .filter(|f| f.sortable)
                    .map(|f| f.name)
                    .collect();
                Error::invalid(
                    "order_by",
                    format!(
                        "cannot order by '{name}'; use one of {}",
                        sortable.join(", ")
                    ),
                )
            })?;
        if terms.iter().any(|term: &OrderTerm| term.field.name == name) {
            return Err(Error::invalid(
                "order_by",
                format!("'{name}' appears twice"),
            ));
        }
        terms.push(OrderTerm {
            field: *field,
            descending,
        });
    }
    Ok(terms)
}

/// The canonical text of an ordering, to bind page tokens to it.
pub fn order_key(terms: &[OrderTerm]) -> String {
    terms
        .iter()
        .map(|term| {
            format!(
                "{} {}",
                term.field.name,
                if term.descending { "desc" } else { "asc" }
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A sort-key value of the last row of a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v")]
pub enum KeyValue {
    Text(String),
    Time(DateTime<Utc>),
    Uuid(Uuid),
    Int(i64),
}

impl KeyValue {
    fn arg(&self) -> Arg {
        match self {
            Self::Text(value) => Arg::Text(value.clone()),
            Self::Time(value) => Arg::Time(*value),
            Self::Uuid(value) => Arg::Uuid(*value),
            Self::Int(value) => Arg::Int(*value),
        }
    }
}

/// Where the previous page ended: the sort-key values and the id of its last row.
#[derive(Debug, Clone, PartialEq)]
pub struct After {
    pub values: Vec<KeyValue>,
    pub id: Uuid,
}

/// A list query as page tokens see it: a token continues only the query (filter and
/// order) that issued it; another query gets INVALID_ARGUMENT rather than a wrong page.
struct Cursor {
    filter: String,
    order: String,
}

/// The signed content of a page token.
#[derive(Serialize, Deserialize)]
struct Position {
    /// Digest of the filter.
    f: String,
    /// Canonical order.
    o: String,
    /// Sort-key values of the last row.
    k: Vec<KeyValue>,
    /// Id of the last row; absent when the sort key is unique by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<Uuid>,
}

impl Cursor {
    pub fn new(filter: &str, order: &[OrderTerm]) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(filter.trim().as_bytes());
        Self {
            filter: digest
                .iter()
                .take(12)
                .map(|byte| format!("{byte:02x}"))
                .collect(),
            order: order_key(order),
        }
    }

    /// Where `page_token` says to continue; `None` for the first page (an empty token).
    pub fn resume(
        &self,
        tokens: &crate::pagination::PageTokens,
        page_token: &str,
    ) -> Result<Option<After>, Error> {
        let Some(position) = self.open(tokens, page_token)? else {
            return Ok(None);
        };
        let id = position
            .i
            .ok_or_else(|| Error::invalid("page_token", "not a valid token"))?;
        Ok(Some(After {
            values: position.k,
            id,
        }))
    }

    /// The token for the page after the row with sort-key `values` and `id`.
    pub fn next(
        &self,
        tokens: &crate::pagination::PageTokens,
        values: Vec<KeyValue>,
        id: Uuid,
    ) -> Result<String, Error> {
        self.seal(tokens, values, Some(id))
    }

    /// Where `page_token` says to continue a list whose sort key is unique by itself
    /// (see [`crate::db::Database::fetch_keyset`]); `None` for the first page.
    pub fn resume_key(
        &self,
        tokens: &crate::pagination::PageTokens,
        page_token: &str,
    ) -> Result<Option<Vec<KeyValue>>, Error> {
        Ok(self.open(tokens, page_token)?.map(|position| position.k))
    }

    /// The token for the page after the row with unique sort key `values`.
    pub fn next_key(
        &self,
        tokens: &crate::pagination::PageTokens,
        values: Vec<KeyValue>,
    ) -> Result<String, Error> {
        self.seal(tokens, values, None)
    }

    fn open(
        &self,
        tokens: &crate::pagination::PageTokens,
        page_token: &str,
    ) -> Result<Option<Position>, Error> {
        if page_token.is_empty() {
            return Ok(None);
        }
        let position: Position = tokens.decode(page_token)?;
        if position.f != self.filter || position.o != self.order {
            return Err(Error::invalid(
                "page_token",
                "the filter, order_by or parent changed since this token was issued; start from the first page",
            ));
        }
        Ok(Some(position))
    }

    fn seal(
        &self,
        tokens: &crate::pagination::PageTokens,
        values: Vec<KeyValue>,
        id: Option<Uuid>,
    ) -> Result<String, Error> {
        tokens.encode(&Position {
            f: self.filter.clone(),
            o: self.order.clone(),
            k: values,
            i: id,
        })
    }
}

/// One List request's paging: its page size and the cursor that reads the request's
/// `page_token` and writes the next page's. Every List RPC pages through it, so a token
/// continues only the filter and order that issued it, and an empty token means the end.
pub struct Paging<'t> {
    pub size: u32,
    cursor: Cursor,
    tokens: &'t crate::pagination::PageTokens,
}

impl<'t> Paging<'t> {
    /// A page of `size` rows of the list `filter` ordered by `order`.
    pub fn new(
        tokens: &'t crate::pagination::PageTokens,
        size: u32,
        filter: &str,
        order: &[OrderTerm],
    ) -> Self {
        Self {
            size,
            cursor: Cursor::new(filter, order),
            tokens,
        }
    }

    /// Where `page_token` says to continue; `None` for the first page (an empty token).
    pub fn resume(&self, page_token: &str) -> Result<Option<After>, Error> {
        self.cursor.resume(self.tokens, page_token)
    }

    /// [`Self::resume`] for a list whose sort key is unique by itself.
    pub fn resume_key(&self, page_token: &str) -> Result<Option<Vec<KeyValue>>, Error> {
        self.cursor.resume_key(self.tokens, page_token)
    }

    /// The token of the page after `rows`: empty when no more rows follow, else the sort-key
    /// values and id that `key` reads off the last row.
    pub fn next<T>(
        &self,
        rows: &[T],
        more: bool,
        key: impl FnOnce(&T) -> (Vec<KeyValue>, Uuid),
    ) -> Result<String, Error> {
        match rows.last() {
            Some(last) if more => {
                let (values, id) = key(last);
                self.cursor.next(self.tokens, values, id)
            }
            _ => Ok(String::new()),
        }
    }

    /// [`Self::next`] for a list whose sort key is unique by itself.
    pub fn next_key<T>(
        &self,
        rows: &[T],
        more: bool,
        key: impl FnOnce(&T) -> Vec<KeyValue>,
    ) -> Result<String, Error> {
        match rows.last() {
            Some(last) if more => self.cursor.next_key(self.tokens, key(last)),
            _ => Ok(String::new()),
        }
    }
}

/// A list's AIP-158 page sizes: `default` for a request's 0, and `max`, above which a
/// request is clamped.
#[derive(Debug, Clone, Copy)]
pub struct PageSizes {
    pub default: u32,
    pub max: u32,
}

impl PageSizes {
    /// The size of a page the request asked for with `page_size`.
    pub fn of(self, requested: i32) -> Result<u32, Error> {
        page_size(requested, self.default, self.max)
    }
}

/// The AIP-132 fields of a List request that pages through a filtered listing.
pub trait ListRequest {
    fn page_size(&self) -> i32;
    fn page_token(&self) -> &str;
    fn filter(&self) -> &str;
    /// AIP-132 `order_by`; a list in a fixed order has none.
    fn order_by(&self) -> &str {
        ""
    }
}

macro_rules! list_requests {
    ($($request:ty $({ $order_by:ident })?),* $(,)?) => {$(
        impl ListRequest for $request {
            fn page_size(&self) -> i32 {
                self.page_size
            }
            fn page_token(&self) -> &str {
                &self.page_token
            }
            fn filter(&self) -> &str {
                &self.filter
            }
            $(fn order_by(&self) -> &str {
                &self.$order_by
            })?
        }
    )*};
}

list_requests!(
    aida_proto::aida::leads::v1::ListLeadsRequest { order_by },
    aida_proto::aida::deals::v1::ListDealsRequest { order_by },
    aida_proto::aida::comms::v1::ListMessagesRequest,
    aida_proto::aida::comms::v1::ListDraftsRequest,
    aida_proto::aida::audit::v1::ListAuditRecordsRequest,
);

/// A List request read: the page it asks for of the rows its filter selects, in the order
/// it asks for (else the list's default), from where its page token left off.
pub struct ListQuery<'t, 'r> {
    pub paging: Paging<'t>,
    pub filter: &'r str,
    pub order: Vec<OrderTerm>,
    pub after: Option<After>,
}

impl<'t, 'r> ListQuery<'t, 'r> {
    /// Reads `request` of a list sortable by `fields` whose pages are `sizes`; a page token
    /// continues only the filter and order that issued it.
    pub fn read(
        tokens: &'t crate::pagination::PageTokens,
        sizes: PageSizes,
        request: &'r impl ListRequest,
        fields: &[Field],
        default_order: &str,
    ) -> Result<Self, Error> {
        let size = sizes.of(request.page_size())?;
        let order = parse_order_by(request.order_by(), fields, default_order)?;
        let paging = Paging::new(tokens, size, request.filter(), &order);
        let after = paging.resume(request.page_token())?;
        Ok(Self {
            paging,
            filter: request.filter(),
            order,
            after,
        })
    }
}

/// Appends the keyset condition "after (`values`, `last_id`)" in the order `terms`, then
/// the unique `id_column` ascending:
/// `(a > x) OR (a = x AND b < y) OR (a = x AND b = y AND id > z)`.
pub fn push_keyset(
    sql: &mut Sql,
    terms: &[OrderTerm],
    values: &[KeyValue],
    id_column: &'static str,
    last_id: Uuid,
) -> Result<(), Error> {
    if values.len() != terms.len() {
        return Err(Error::invalid("page_token", "does not match order_by"));
    }
    let mut keys = terms.to_vec();
    keys.push(OrderTerm::key(id_column, FieldKind::Uuid, false));
    let mut values = values.to_vec();
    values.push(KeyValue::Uuid(last_id));
    push_after(sql, &keys, &values)
}

/// Appends the keyset condition "after `values`" for sort `keys` that are unique together
/// (the last one breaks every tie): `(a > x) OR (a = x AND b < y)`.
pub fn push_after(sql: &mut Sql, keys: &[OrderTerm], values: &[KeyValue]) -> Result<(), Error> {
    if values.len() != keys.len() || keys.is_empty() {
        return Err(Error::invalid("page_token", "does not match order_by"));
    }
    sql.push(" AND (");
    for (level, key) in keys.iter().enumerate() {
        if level > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for (term, value) in keys.iter().zip(values).take(level) {
            sql.push(term.field.column).push(" = ");
            sql.push_arg(value.arg());
            sql.push(" AND ");
        }
        sql.push(key.field.column)
            .push(if key.descending { " < " } else { " > " });
        sql.push_arg(values[level].arg());
        sql.push(")");
    }
    sql.push(")");
    Ok(())
}

/// Appends ` ORDER BY` over unique sort `keys`.
pub fn push_order_by_keys(sql: &mut Sql, keys: &[OrderTerm]) {
    sql.push(" ORDER BY ");
    for (index, key) in keys.iter().enumerate() {
        if index > 0 {
            sql.push(", ");
        }
        sql.push(key.field.column)
            .push(if key.descending { " DESC" } else { " ASC" });
    }
}

/// Appends ` ORDER BY …, id ASC`.
pub fn push_order_by(sql: &mut Sql, terms: &[OrderTerm], id_column: &str) {
    sql.push(" ORDER BY ");
    for term in terms {
        sql.push(term.field.column)
            .push(if term.descending { " DESC, " } else { " ASC, " });
    }
    sql.push(id_column).push(" ASC");
}

/// The fields an update changes (AIP-134): the paths of `mask`, or the `populated` fields of
/// the request when the mask is empty; `*` stands for every `writable` field. A path that is
/// not writable is INVALID_ARGUMENT on `update_mask` listing the writable ones.
pub fn update_paths<P: Into<String>>(
    mask: Option<&prost_types::FieldMask>,
    populated: impl IntoIterator<Item = P>,
    writable: &[&str],
) -> Result<std::collections::BTreeSet<String>, Error> {
    let requested: Vec<String> = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => populated.into_iter().map(Into::into).collect(),
    };
    let mut paths = std::collections::BTreeSet::new();
    for path in requested {
        if path == "*" {
            paths.extend(writable.iter().map(|field| (*field).to_owned()));
        } else if writable.contains(&path.as_str()) {
            paths.insert(path);
        } else {
            return Err(Error::invalid(
                "update_mask",
                format!(
                    "'{path}' cannot be updated; writable fields: {}",
                    writable.join(", ")
                ),
            ));
        }
    }
    Ok(paths)
}

/// AIP-158 page size: 0 means `default`, above `max` is clamped, negative is an error.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32, Error> {
    match u32::try_from(requested) {
        Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(default),
        Ok(size) => Ok(size.min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(value: &str) -> Option<&'static str> {
        match value.strip_prefix("LEAD_STATUS_").unwrap_or(value) {
            "NEW" => Some("NEW"),
            "QUALIFIED" => Some("QUALIFIED"),
            _ => None,
        }
    }

    const FIELDS: &[Field] = &[
        Field::new("email", FieldKind::Text, true),
        Field::new("status", FieldKind::Enum(status), true),
        Field::new("create_time", FieldKind::Timestamp, true),
        Field::new("attributes", FieldKind::Map, false),
    ];

    fn compile_filter(filter: &str) -> Result<Sql, Error> {
        let mut sql = Sql::new("WHERE tenant_id = $1").bind("t");
        push_filter(&mut sql, Engine::Postgres, filter, FIELDS)?;
        Ok(sql)
    }

    #[test]
    fn comparisons_joined_by_and_compile_to_bound_sql() {
        let sql = compile_filter(r#"status = "NEW" AND create_time > "2026-01-01T00:00:00Z""#)
            .expect("ok");
        assert_eq!(
            sql.text(),
            "WHERE tenant_id = $1 AND ((status = $2) AND (create_time > $3))"
        );
        assert_eq!(sql.args().len(), 3);
    }

    #[test]
    fn or_not_parentheses_and_bare_values_are_understood() {
        let sql = compile_filter("NOT (status = NEW OR status = LEAD_STATUS_QUALIFIED) email:acme")
            .expect("ok");
        assert_eq!(
            sql.text(),
            "WHERE tenant_id = $1 AND ((NOT ((status = $2) OR (status = $3))) AND (LOWER(email) LIKE $4 ESCAPE '\\'))"
        );
    }

    #[test]
    fn map_keys_compile_per_engine() {
        let mut sql = Sql::new("");
        push_filter(&mut sql, Engine::Sqlite, "attributes.tier = gold", FIELDS).expect("ok");
        assert!(
            sql.text()
                .contains("json_extract(attributes, '$.\"tier\"') = $1"),
            "{}",
            sql.text()
        );
    }

    #[test]
    fn malformed_filters_are_invalid_argument_naming_the_filter() {
        for bad in [
            "status =",
            "status = \"NEW",
            "nope = 1",
            "status = ALIVE",
            "create_time > yesterday",
            "(status = NEW",
            "status ~ NEW",
            "status = NEW )",
            "email.x = 1",
            "attributes = 1",
            "attributes.b@d = 1",
            "status < NEW",
        ] {
            let error = compile_filter(bad).expect_err(bad);
            assert!(
                matches!(&error, Error::InvalidArgument(v) if v[0].field == "filter"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn order_by_accepts_directions_and_refuses_unknown_fields() {
        let terms =
            parse_order_by("create_time desc, email", FIELDS, "create_time desc").expect("ok");
        assert_eq!(order_key(&terms), "create_time desc,email asc");
        assert!(parse_order_by("attributes", FIELDS, "").is_err());
        assert!(parse_order_by("email sideways", FIELDS, "").is_err());
        assert!(parse_order_by("email, email", FIELDS, "").is_err());
    }

    #[test]
    fn keyset_conditions_expand_level_by_level() {
        let terms = parse_order_by("create_time desc, email", FIELDS, "").expect("ok");
        let mut sql = Sql::new("WHERE x");
        let time = Utc::now();
        push_keyset(
            &mut sql,
            &terms,
            &[KeyValue::Time(time), KeyValue::Text("a".into())],
            "id",
            Uuid::nil(),
        )
        .expect("ok");
        assert_eq!(
            sql.text(),
            "WHERE x AND ((create_time < $1) OR (create_time = $2 AND email > $3) OR (create_time = $4 AND email = $5 AND id > $6))"
        );
    }

    #[test]
    fn hidden_fields_cannot_be_filtered_on_or_ordered_by() {
        let hidden = ["email", "phone"];
        let order = parse_order_by("create_time desc", FIELDS, "").expect("order");
        for filter in [
            "email = \"ada@example.com\"",
            "email = \"abc*\"",
            "email:\"example\"",
            "status = NEW AND (phone = \"+44*\" OR first_name = Ada)",
            "NOT email = x",
            "-phone:1",
        ] {
            let error = refuse_hidden(filter, &order, &hidden).expect_err(filter);
            assert!(
                matches!(&error, Error::InvalidArgument(v) if v[0].field == "filter"
                    && (v[0].description.contains("'email'") || v[0].description.contains("'phone'"))),
                "{filter}: {error}"
            );
        }
        let by_email = parse_order_by("email", FIELDS, "").expect("order");
        let error = refuse_hidden("", &by_email, &hidden).expect_err("order by email");
        assert!(matches!(&error, Error::InvalidArgument(v) if v[0].field == "order_by"));
        refuse_hidden("status = NEW AND first_name:ad", &order, &hidden).expect("visible");
        refuse_hidden("email = x", &by_email, &[]).expect("nothing hidden");
    }

    #[test]
    fn page_size_defaults_clamps_and_refuses_negatives() {
        assert_eq!(page_size(0, 50, 1000).expect("ok"), 50);
        assert_eq!(page_size(5000, 50, 1000).expect("ok"), 1000);
        assert!(page_size(-1, 50, 1000).is_err());
    }
    #[test]
    fn a_page_token_continues_only_the_query_that_issued_it() {
        let tokens =
            crate::pagination::PageTokens::new(&secrecy::SecretString::from("k".repeat(32)));
        let order = parse_order_by("", FIELDS, "create_time desc").expect("order");
        let cursor = Cursor::new("status = \"NEW\"", &order);
        let id = Uuid::now_v7();
        let token = cursor
            .next(&tokens, vec![KeyValue::Text("x".into())], id)
            .expect("token");

        assert_eq!(cursor.resume(&tokens, "").expect("first page"), None);
        let after = cursor
            .resume(&tokens, &token)
            .expect("same query")
            .expect("a position");
        assert_eq!(
            (after.values, after.id),
            (vec![KeyValue::Text("x".into())], id)
        );
        // Whitespace around the filter does not make it another query.
        assert!(
            Cursor::new("  status = \"NEW\" ", &order)
                .resume(&tokens, &token)
                .is_ok()
        );

        let other_filter = Cursor::new("status = \"QUALIFIED\"", &order);
        let other_order = Cursor::new(
            "status = \"NEW\"",
            &parse_order_by("email", FIELDS, "create_time desc").expect("order"),
        );
        for cursor in [other_filter, other_order] {
            match cursor.resume(&tokens, &token) {
                Err(Error::InvalidArgument(violations)) => {
                    assert_eq!(violations[0].field, "page_token")
                }
                other => panic!("expected page_token to be refused, got {other:?}"),
            }
        }
    }
}
