//! `/openapi.json`: the API's OpenAPI document, generated from the handlers'
//! `#[utoipa::path]` annotations as the router registers them (utoipa-axum's `routes!`
//! adds a route and its documentation in one call), then finished from [`super::auth::ROUTES`]:
//! each operation's security and required role, and the JSON error every route may answer.
//!
//! Owns the rule of what the document leaves out: routes outside `/api/` are not the JSON
//! API (`/metrics` is Prometheus text, `/openapi.json` is the document itself, dashboard
//! pages and static assets are HTML) and are served with a plain `.route`, undocumented;
//! every route under `/api/` is documented. Must not describe a route the router does not
//! serve: paths come only from `routes!` registrations, never written here.

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder, SecurityRequirement};

use super::auth::{access, Access};
use super::error::ErrorBody;

/// The document's fixed part; `routes!` adds the paths.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "avwarden",
        description = "The status API of avwarden: devices, rooms, bookings and self-tests, alerts, \
                       the logbook and the equipment archive. Every error is a JSON body \
                       `{\"error\": code, \"detail\": text}`. Who may call an operation is its \
                       `x-required-role` (none: open)."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "status", description = "The daemon itself"),
        (name = "session", description = "Dashboard sessions"),
        (name = "rooms", description = "The site and its rooms"),
        (name = "devices", description = "Devices: state and commands"),
        (name = "bookings", description = "Bookings, self-tests and the board"),
        (name = "records", description = "The logbook and the equipment archive"),
        (name = "alerts", description = "Alerts, maintenance windows and the roster"),
        (name = "live", description = "The live event stream"),
        (name = "fleet", description = "Many buildings: what a central (aggregate) daemon follows, read-only"),
    )
)]
pub struct ApiDoc;

/// Whether a route belongs in the document: the JSON API is everything under `/api/`.
pub fn documented(path: &str) -> bool {
    path.starts_with("/api/")
}

/// The registered document finished from `auth::ROUTES`: a route that needs a role gets the
/// bearer and session schemes, `x-required-role`, a line saying so, and its 401 and 403;
/// every operation gets the JSON error as its `default` answer.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.add_security_scheme(
        "session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(super::session::COOKIE))),
    );
    let error = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
            ("PATCH", &mut item.patch),
            ("HEAD", &mut item.head),
            ("OPTIONS", &mut item.options),
            ("TRACE", &mut item.trace),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            let method = axum::http::Method::from_bytes(method.as_bytes())
                .unwrap_or(axum::http::Method::GET);
            let responses = &mut op.responses.responses;
            responses.insert(
                "default".into(),
                error("An error: a JSON body {\"error\": code, \"detail\": text}").into(),
            );
            let note = match access(&method, path) {
                Access::Open => "Open: no token needed.".to_owned(),
                Access::AtLeast(role) => {
                    op.security = Some(vec![
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                        SecurityRequirement::new("session", Vec::<String>::new()),
                    ]);
                    op.extensions = Some(
                        ExtensionsBuilder::new()
                            .add("x-required-role", role.as_str())
                            .build(),
                    );
                    responses.insert(
                        "401".into(),
                        error("No token or session, or one not valid").into(),
                    );
                    responses.insert(
                        "403".into(),
                        error("The caller's role is below the one needed").into(),
                    );
                    format!("Needs a token (or session) with at least the role `{role}`.")
                }
            };
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                _ => note,
            });
        }
    }
    doc
}

/// The handler of `GET /openapi.json`: the document, serialised once.
pub fn serve(doc: &OpenApi) -> impl Fn() -> std::future::Ready<axum::response::Response> + Clone {
    let body = Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
    move || {
        std::future::ready(
            ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        )
    }
}
