//! The REST routes, derived at start from the `google.api.http` annotations in the
//! descriptor set: every annotated RPC of every service (and its `additional_bindings`)
//! becomes a route, with no edge code per method.

use aida_proto::google::api::HttpRule;
use aida_proto::google::api::http_rule::Pattern;
use http::Method;
use prost_reflect::{DescriptorPool, MethodDescriptor, Value};

use crate::template::PathTemplate;

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body.
    None,
    /// `body: "*"`: every field not bound by the path.
    All,
    /// `body: "field"`: that one top-level field.
    Field(String),
}

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: Method,
    pub template: PathTemplate,
    pub body: BodyRule,
    /// `response_body`: send only this field of the response.
    pub response_body: Option<String>,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
}

impl Route {
    pub fn service(&self) -> &str {
        self.method.parent_service().full_name()
    }

    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }
}

/// The values a path bound, by field path.
pub type Bindings = Vec<(String, String)>;

/// Every route, most specific first.
pub struct RouteTable {
    routes: Vec<Route>,
}

fn binding(rule: &HttpRule, method: &MethodDescriptor) -> Result<Option<Route>, String> {
    let (http_method, path) = match &rule.pattern {
        Some(Pattern::Get(path)) => (Method::GET, path),
        Some(Pattern::Put(path)) => (Method::PUT, path),
        Some(Pattern::Post(path)) => (Method::POST, path),
        Some(Pattern::Delete(path)) => (Method::DELETE, path),
        Some(Pattern::Patch(path)) => (Method::PATCH, path),
        Some(Pattern::Custom(custom)) => (
            Method::from_bytes(custom.kind.as_bytes()).map_err(|_| {
                format!("{}: bad custom method {}", method.full_name(), custom.kind)
            })?,
            &custom.path,
        ),
        None => return Ok(None),
    };
    let template =
        PathTemplate::parse(path).map_err(|error| format!("{}: {error}", method.full_name()))?;
    let input = method.input();
    for field_path in template.field_paths() {
        resolve(&input, field_path).ok_or_else(|| {
            format!(
                "{}: the path binds unknown field {field_path}",
                method.full_name()
            )
        })?;
    }
    let body = match rule.body.as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::All,
        field => {
            input.get_field_by_name(field).ok_or_else(|| {
                format!("{}: body names unknown field {field}", method.full_name())
            })?;
            BodyRule::Field(field.to_owned())
        }
    };
    Ok(Some(Route {
        http_method,
        template,
        body,
        response_body: Some(rule.response_body.clone()).filter(|field| !field.is_empty()),
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        method: method.clone(),
    }))
}

/// The field descriptor at a dotted path (`lead.id`), through singular message fields.
pub fn resolve(
    message: &prost_reflect::MessageDescriptor,
    path: &str,
) -> Option<prost_reflect::FieldDescriptor> {
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))?;
        if parts.peek().is_none() {
            return Some(field);
        }
        if field.is_list() || field.is_map() {
            return None;
        }
        current = field.kind().as_message()?.clone();
    }
    None
}

impl RouteTable {
    /// The routes of every service in `pool` whose name starts with `package_prefix`.
    pub fn from_pool(pool: &DescriptorPool, package_prefix: &str) -> Result<Self, String> {
        let extension = pool
            .get_extension_by_name("google.api.http")
            .ok_or("the descriptor set lacks google.api.http")?;
        let mut routes = Vec::new();
        for service in pool
            .services()
            .filter(|service| service.full_name().starts_with(package_prefix))
        {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(&extension).into_owned() else {
                    continue;
                };
                let rule: HttpRule = rule
                    .transcode_to()
                    .map_err(|error| format!("{}: {error}", method.full_name()))?;
                routes.extend(binding(&rule, &method)?);
                for additional in &rule.additional_bindings {
                    routes.extend(binding(additional, &method)?);
                }
            }
        }
        routes.sort_by(|left, right| {
            right
                .template
                .specificity()
                .cmp(&left.template.specificity())
        });
        Ok(Self { routes })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `method` and `path`, with the path's bindings.
    pub fn find(&self, method: &Method, path: &str) -> Option<(&Route, Bindings)> {
        self.locate(method, path)
            .map(|(_, route, bindings)| (route, bindings))
    }

    /// [`RouteTable::find`], with the route's place in the table ([`RouteTable::get`]).
    pub fn locate(&self, method: &Method, path: &str) -> Option<(usize, &Route, Bindings)> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, route)| route.http_method == method)
            .find_map(|(index, route)| {
                route
                    .template
                    .matches(path)
                    .map(|bindings| (index, route, bindings))
            })
    }

    /// The route at `index` (from [`RouteTable::locate`]).
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Whether some route matches `path` with another method (for 405).
    pub fn path_exists(&self, path: &str) -> bool {
        self.routes
            .iter()
            .any(|route| route.template.matches(path).is_some())
    }
}
