//! The OpenAPI 3 document served at `/openapi.json`. Its paths and schemas come
//! from the routes themselves (each resource registers its handlers with
//! `utoipa_axum::routes!`, which reads their `#[utoipa::path]` attributes), so the
//! document cannot drift from the router; this file holds only what is not a
//! route: the title, the description and the bearer scheme.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Boilerhouse",
        description = "Pools of pre-warmed containers handed to tenants. Every route also answers under /api/v1. When BOILERHOUSE_API_TOKEN is set, every route but /health, /ready and /openapi.json needs `Authorization: Bearer <token>`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;
