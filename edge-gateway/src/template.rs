//! `google.api.http` path templates: parsing and matching.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! A single-segment variable decodes every percent escape; a multi-segment one (`**`, or a
//! template of several segments) keeps `%2F` encoded so that the path structure survives,
//! as the HTTP rule specification requires.

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Star,
    DoubleStar,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: String,
    /// Index of its first segment.
    start: usize,
    /// One past its last segment.
    end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("'{template}' does not start with '/'"))?;
        // The verb follows the last ':' that is outside braces.
        let mut depth = 0;
        let mut verb_at = None;
        for (index, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(index),
                _ => {}
            }
        }
        let (path, verb) = match verb_at {
            Some(index) => (&rest[..index], Some(rest[index + 1..].to_owned())),
            None => (rest, None),
        };
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner
                    .find('}')
                    .ok_or_else(|| format!("'{template}': unclosed variable"))?;
                let body = &inner[..close];
                let (field_path, sub) = match body.split_once('=') {
                    Some((field, sub)) => (field.to_owned(), sub.to_owned()),
                    None => (body.to_owned(), "*".to_owned()),
                };
                let start = segments.len();
                for part in sub.split('/') {
                    segments.push(parse_segment(part));
                }
                variables.push(Variable {
                    field_path,
                    start,
                    end: segments.len(),
                });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                segments.push(parse_segment(&chars[..end]));
                chars = &chars[end..];
            }
            chars = chars.strip_prefix('/').unwrap_or(chars);
        }
        if let Some(position) = segments
            .iter()
            .position(|segment| *segment == Segment::DoubleStar)
            && position + 1 != segments.len()
        {
            return Err(format!("'{template}': '**' must be the last segment"));
        }
        Ok(Self {
            source: template.to_owned(),
            segments,
            variables,
            verb,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field paths bound by the template, in order.
    pub fn field_paths(&self) -> impl Iterator<Item = &str> {
        self.variables
            .iter()
            .map(|variable| variable.field_path.as_str())
    }

    /// How specific the template is: literal segments count most; ties prefer a verb.
    pub fn specificity(&self) -> (usize, bool, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|segment| matches!(segment, Segment::Literal(_)))
            .count();
        (literals, self.verb.is_some(), self.segments.len())
    }

    /// The OpenAPI form: variables as `{field.path}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut index = 0;
        while index < self.segments.len() {
            out.push('/');
            if let Some(variable) = self
                .variables
                .iter()
                .find(|variable| variable.start == index)
            {
                out.push('{');
                out.push_str(&variable.field_path);
                out.push('}');
                index = variable.end;
                continue;
            }
            match &self.segments[index] {
                Segment::Literal(literal) => out.push_str(literal),
                Segment::Star => out.push('*'),
                Segment::DoubleStar => out.push_str("**"),
            }
            index += 1;
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// Matches a request path; returns the bound (field path, value) pairs.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => {
                // A path with a verb does not match a template without one.
                if rest
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| last.contains(':'))
                {
                    return None;
                }
                rest
            }
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(self.segments.len());
        let mut cursor = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => {
                    let part = parts.get(cursor)?;
                    if decode(part, true) != *literal {
                        return None;
                    }
                    spans.push((cursor, cursor + 1));
                    cursor += 1;
                }
                Segment::Star => {
                    let part = parts.get(cursor)?;
                    if part.is_empty() {
                        return None;
                    }
                    spans.push((cursor, cursor + 1));
                    cursor += 1;
                }
                Segment::DoubleStar => {
                    spans.push((cursor, parts.len()));
                    cursor = parts.len();
                }
            }
        }
        if cursor != parts.len() {
            return None;
        }
        let mut bindings = Vec::new();
        for variable in &self.variables {
            let from = spans.get(variable.start).map(|span| span.0)?;
            let to = spans.get(variable.end.checked_sub(1)?).map(|span| span.1)?;
            let raw = parts[from..to].join("/");
            let single = variable.end - variable.start == 1
                && self.segments[variable.start] == Segment::Star;
            bindings.push((variable.field_path.clone(), decode(&raw, single)));
        }
        Some(bindings)
    }
}

fn parse_segment(part: &str) -> Segment {
    match part {
        "*" => Segment::Star,
        "**" => Segment::DoubleStar,
        literal => Segment::Literal(literal.to_owned()),
    }
}

/// Percent-decodes `raw`; a multi-segment value keeps `%2F` as is.
fn decode(raw: &str, single_segment: bool) -> String {
    if single_segment {
        return percent_decode_str(raw).decode_utf8_lossy().into_owned();
    }
    raw.split("%2F")
        .flat_map(|piece| piece.split("%2f"))
        .map(|piece| percent_decode_str(piece).decode_utf8_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template)
            .expect("template")
            .matches(path)
    }

    #[test]
    fn simple_variables_and_literals_match() {
        assert_eq!(
            bind("/v1/leads/{id}", "/v1/leads/42"),
            Some(vec![("id".into(), "42".into())])
        );
        assert_eq!(bind("/v1/leads/{id}", "/v1/leads"), None);
        assert_eq!(bind("/v1/leads/{id}", "/v1/deals/42"), None);
        assert_eq!(bind("/v1/leads", "/v1/leads"), Some(vec![]));
    }

    #[test]
    fn nested_field_paths_bind() {
        assert_eq!(
            bind("/v1/leads/{lead.id}", "/v1/leads/7"),
            Some(vec![("lead.id".into(), "7".into())])
        );
    }

    #[test]
    fn custom_verbs_split_from_the_last_segment() {
        assert_eq!(
            bind("/v1/leads/{id}:qualify", "/v1/leads/42:qualify"),
            Some(vec![("id".into(), "42".into())])
        );
        assert_eq!(bind("/v1/leads/{id}:qualify", "/v1/leads/42:reject"), None);
        assert_eq!(bind("/v1/leads/{id}", "/v1/leads/42:qualify"), None);
        assert_eq!(bind("/v1/deals:watch", "/v1/deals:watch"), Some(vec![]));
        assert_eq!(bind("/v1/deals/{id}", "/v1/deals:watch"), None);
    }

    #[test]
    fn resource_name_templates_capture_several_segments() {
        assert_eq!(
            bind("/v1/{name=tenants/*/leads/*}", "/v1/tenants/acme/leads/7"),
            Some(vec![("name".into(), "tenants/acme/leads/7".into())])
        );
        assert_eq!(
            bind("/v1/{name=tenants/*/leads/*}", "/v1/tenants/acme/deals/7"),
            None
        );
    }

    #[test]
    fn double_star_takes_the_rest_and_keeps_encoded_slashes() {
        assert_eq!(
            bind("/v1/files/{path=**}", "/v1/files/a/b%20c/d"),
            Some(vec![("path".into(), "a/b c/d".into())])
        );
        assert_eq!(
            bind("/v1/files/{path=**}", "/v1/files/a%2Fb"),
            Some(vec![("path".into(), "a%2Fb".into())])
        );
        assert_eq!(
            bind("/v1/files/{path=**}", "/v1/files"),
            Some(vec![("path".into(), String::new())])
        );
    }

    #[test]
    fn single_segment_variables_decode_everything() {
        assert_eq!(
            bind("/v1/leads/{id}", "/v1/leads/a%2Fb%20c"),
            Some(vec![("id".into(), "a/b c".into())])
        );
        assert_eq!(bind("/v1/leads/{id}", "/v1/leads/a/b"), None);
    }

    #[test]
    fn openapi_paths_name_the_variables() {
        let template = PathTemplate::parse("/v1/{name=tenants/*/leads/*}:archive").expect("parse");
        assert_eq!(template.openapi_path(), "/v1/{name}:archive");
        assert!(PathTemplate::parse("/v1/{path=**}/x").is_err());
    }
}
